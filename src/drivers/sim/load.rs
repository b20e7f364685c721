//! A simulated DC electronic load connected to a source of fixed voltage and
//! internal resistance (12 V behind 0.1 ohm unless configured). Constant
//! current, voltage, resistance and power modes settle where the load's
//! setting meets the source's line `V = Vs - I * Rs`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{InstrumentModel, round6};
use crate::drivers::{ActionSpec, DriverError, ParamSpec, Params};

const MAX_CURRENT: f64 = 30.0;
const MAX_VOLTAGE: f64 = 150.0;
const MAX_POWER: f64 = 300.0;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    pub model: Option<String>,
    pub source_voltage: Option<f64>,
    pub source_resistance: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub voltage: f64,
    pub current: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    model: String,
    source_voltage: f64,
    source_resistance: f64,
    input: bool,
    mode: &'static str,
    current: f64,
    voltage: f64,
    resistance: f64,
    power: f64,
}

impl Load {
    fn fresh(model: String, source_voltage: f64, source_resistance: f64) -> Self {
        Self {
            model,
            source_voltage,
            source_resistance,
            input: false,
            mode: "CC",
            current: 0.0,
            voltage: 0.0,
            resistance: 1000.0,
            power: 0.0,
        }
    }

    pub fn measure(&self) -> Measurement {
        let (vs, rs) = (self.source_voltage, self.source_resistance);
        let short_circuit = (vs / rs).min(MAX_CURRENT);
        let current = if !self.input {
            0.0
        } else {
            match self.mode {
                "CC" => self.current.min(short_circuit),
                // The load sinks whatever holds the terminals at its setting;
                // above the open-circuit voltage it sinks nothing.
                "CV" => ((vs - self.voltage) / rs).clamp(0.0, short_circuit),
                "CR" => (vs / (self.resistance + rs)).min(short_circuit),
                // P = I * (Vs - I * Rs): take the smaller root; past the
                // source's maximum power, settle at that maximum.
                _ => {
                    let disc = vs * vs - 4.0 * rs * self.power;
                    if disc >= 0.0 {
                        (vs - disc.sqrt()) / (2.0 * rs)
                    } else {
                        vs / (2.0 * rs)
                    }
                    .min(short_circuit)
                }
            }
        };
        Measurement {
            voltage: vs - current * rs,
            current,
        }
    }

    fn readings(&self) -> Value {
        let m = self.measure();
        json!({
            "input": self.input,
            "mode": self.mode,
            "voltage": round6(m.voltage),
            "current": round6(m.current),
            "power": round6(m.voltage * m.current),
        })
    }
}

impl InstrumentModel for Load {
    type Config = LoadConfig;
    const DRIVER: &'static str = "sim-load";

    fn from_config(config: LoadConfig) -> Result<Self, String> {
        let source_voltage = config.source_voltage.unwrap_or(12.0);
        // The load's input is rated to MAX_VOLTAGE; a source with no
        // voltage or no resistance inside has no operating point.
        if !(source_voltage > 0.0 && source_voltage <= MAX_VOLTAGE) {
            return Err(format!(
                "source_voltage must be more than 0 and at most {MAX_VOLTAGE} V (the load's rating), got {source_voltage}"
            ));
        }
        let source_resistance = config.source_resistance.unwrap_or(0.1);
        if !(source_resistance.is_finite() && source_resistance > 0.0) {
            return Err(format!(
                "source_resistance must be a positive number of ohms, got {source_resistance}"
            ));
        }
        Ok(Self::fresh(
            config
                .model
                .unwrap_or_else(|| "LabLink SimLoad EL300".into()),
            source_voltage,
            source_resistance,
        ))
    }

    fn model_name(&self) -> String {
        self.model.clone()
    }

    fn actions() -> Vec<ActionSpec> {
        vec![
            ActionSpec::control("set_input", vec![ParamSpec::boolean("enabled")]),
            ActionSpec::control(
                "set_mode",
                vec![ParamSpec::choice("mode", &["CC", "CV", "CR", "CP"])],
            ),
            ActionSpec::control(
                "set_current",
                vec![ParamSpec::number("current", 0.0, MAX_CURRENT, "A")],
            ),
            ActionSpec::control(
                "set_voltage",
                vec![ParamSpec::number("voltage", 0.0, MAX_VOLTAGE, "V")],
            ),
            ActionSpec::control(
                "set_resistance",
                vec![ParamSpec::number("resistance", 0.05, 10_000.0, "ohm")],
            ),
            ActionSpec::control(
                "set_power",
                vec![ParamSpec::number("power", 0.0, MAX_POWER, "W")],
            ),
            ActionSpec::control("reset", vec![]),
            ActionSpec::observe("get_measurement", vec![]),
            ActionSpec::observe("get_status", vec![]),
        ]
    }

    fn apply(&mut self, action: &str, params: &Params) -> Result<Value, DriverError> {
        match action {
            "set_input" => self.input = params.boolean("enabled"),
            "set_mode" => {
                self.mode = match params.text("mode") {
                    "CV" => "CV",
                    "CR" => "CR",
                    "CP" => "CP",
                    _ => "CC",
                }
            }
            "set_current" => self.current = params.number("current"),
            "set_voltage" => self.voltage = params.number("voltage"),
            "set_resistance" => self.resistance = params.number("resistance"),
            "set_power" => self.power = params.number("power"),
            "reset" => {
                *self = Self::fresh(
                    self.model.clone(),
                    self.source_voltage,
                    self.source_resistance,
                )
            }
            "get_measurement" => return Ok(self.readings()),
            "get_status" => return Ok(self.state()),
            other => return Err(DriverError::Rejected(format!("unknown action {other}"))),
        }
        Ok(self.state())
    }

    fn state(&self) -> Value {
        json!({
            "model": self.model,
            "source": {"voltage": self.source_voltage, "resistance": self.source_resistance},
            "setpoints": {
                "current": self.current,
                "voltage": self.voltage,
                "resistance": self.resistance,
                "power": self.power,
            },
            "readings": self.readings(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Load {
        let mut l = Load::from_config(LoadConfig::default()).unwrap();
        l.input = true;
        l
    }

    #[test]
    fn each_mode_settles_on_the_source_line() {
        let mut l = load();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        l.current = 2.0;
        let m = l.measure();
        assert!(close(m.current, 2.0) && close(m.voltage, 11.8), "{m:?}");
        l.mode = "CV";
        l.voltage = 11.0;
        let m = l.measure();
        assert!(close(m.voltage, 11.0) && close(m.current, 10.0), "{m:?}");
        l.mode = "CR";
        l.resistance = 5.9;
        let m = l.measure();
        assert!(close(m.current, 2.0), "{m:?}");
        l.mode = "CP";
        l.power = 23.6;
        let m = l.measure();
        assert!(
            close(m.voltage * m.current, 23.6) && close(m.current, 2.0),
            "{m:?}"
        );
        l.input = false;
        assert_eq!(l.measure().current, 0.0);
    }
}
