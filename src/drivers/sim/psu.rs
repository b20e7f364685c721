//! A simulated three-channel bench power supply (30 V/3 A, 30 V/3 A,
//! 5 V/3 A), each channel driving a resistive load. Measured values follow
//! from the setpoints: constant voltage until the load would draw more than
//! the current limit, then constant current. The limit starts at the
//! channel's maximum, so a fresh supply delivers the voltage it is set to.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{InstrumentModel, round6};
use crate::domain::number::Compact;
use crate::drivers::{ActionSpec, DriverError, ParamError, ParamSpec, ParamValue, Params};

const CHANNEL_MAX: [(f64, f64); 3] = [(30.0, 3.0), (30.0, 3.0), (5.0, 3.0)];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsuConfig {
    pub model: Option<String>,
    /// Load resistance on each channel, in ohms.
    pub load_ohms: Option<Vec<f64>>,
}

const DEFAULT_LOAD_OHMS: [f64; 3] = [10.0, 10.0, 5.0];

/// One resistance per channel, each a positive number of ohms.
fn load_ohms(given: Option<Vec<f64>>) -> Result<[f64; 3], String> {
    let Some(given) = given else {
        return Ok(DEFAULT_LOAD_OHMS);
    };
    let loads: [f64; 3] = given.clone().try_into().map_err(|_| {
        format!(
            "load_ohms must list 3 values, one per channel, got {}",
            given.len()
        )
    })?;
    for (channel, ohms) in loads.iter().enumerate() {
        if !(ohms.is_finite() && *ohms > 0.0) {
            return Err(format!(
                "load_ohms: the load on channel {} must be a positive number of ohms, got {ohms}",
                channel + 1
            ));
        }
    }
    Ok(loads)
}

#[derive(Debug, Clone, PartialEq)]
struct Channel {
    max_voltage: f64,
    max_current: f64,
    voltage_set: f64,
    current_limit: f64,
    output: bool,
    load_ohms: f64,
}

/// What a channel delivers: volts, amps, and the regulation mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub voltage: f64,
    pub current: f64,
    pub mode: &'static str,
}

impl Channel {
    fn reading(&self) -> Reading {
        if !self.output {
            return Reading {
                voltage: 0.0,
                current: 0.0,
                mode: "off",
            };
        }
        let wanted = self.voltage_set / self.load_ohms;
        if wanted <= self.current_limit {
            Reading {
                voltage: self.voltage_set,
                current: wanted,
                mode: "CV",
            }
        } else {
            Reading {
                voltage: self.current_limit * self.load_ohms,
                current: self.current_limit,
                mode: "CC",
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Psu {
    model: String,
    load_ohms: [f64; 3],
    channels: Vec<Channel>,
}

impl Psu {
    fn fresh_channels(load_ohms: [f64; 3]) -> Vec<Channel> {
        CHANNEL_MAX
            .iter()
            .zip(load_ohms)
            .map(|(&(max_voltage, max_current), load_ohms)| Channel {
                max_voltage,
                max_current,
                voltage_set: 0.0,
                current_limit: max_current,
                output: false,
                load_ohms,
            })
            .collect()
    }

    pub fn reading(&self, channel: usize) -> Reading {
        self.channels[channel].reading()
    }

    fn channel_json(&self, index: usize) -> Value {
        let c = &self.channels[index];
        let r = c.reading();
        json!({
            "channel": index + 1,
            "output": c.output,
            "voltage_set": c.voltage_set,
            "current_limit": c.current_limit,
            "max_voltage": c.max_voltage,
            "max_current": c.max_current,
            "load_ohms": c.load_ohms,
            "voltage": round6(r.voltage),
            "current": round6(r.current),
            "power": round6(r.voltage * r.current),
            "mode": r.mode,
        })
    }
}

fn out_of_range(parameter: &str, value: f64, max: f64, channel: usize) -> DriverError {
    DriverError::InvalidParameter(ParamError {
        parameter: parameter.into(),
        reason: format!(
            "must be between 0 and {max} on channel {}, got {}",
            channel + 1,
            Compact(value)
        ),
    })
}

fn channel_param() -> ParamSpec {
    ParamSpec::integer("channel", 1, 3).with_default(ParamValue::Integer(1))
}

impl InstrumentModel for Psu {
    type Config = PsuConfig;
    const DRIVER: &'static str = "sim-psu";

    fn from_config(config: PsuConfig) -> Result<Self, String> {
        let load_ohms = load_ohms(config.load_ohms)?;
        Ok(Self {
            model: config.model.unwrap_or_else(|| "LabLink SimPSU 3303".into()),
            load_ohms,
            channels: Self::fresh_channels(load_ohms),
        })
    }

    fn model_name(&self) -> String {
        self.model.clone()
    }

    fn actions() -> Vec<ActionSpec> {
        vec![
            ActionSpec::control(
                "set_voltage",
                vec![
                    ParamSpec::number("voltage", 0.0, 30.0, "V"),
                    channel_param(),
                ],
            ),
            ActionSpec::control(
                "set_current",
                vec![ParamSpec::number("current", 0.0, 3.0, "A"), channel_param()],
            ),
            ActionSpec::control(
                "set_output",
                vec![ParamSpec::boolean("enabled"), channel_param()],
            ),
            ActionSpec::control("reset", vec![]),
            ActionSpec::observe("get_voltage", vec![channel_param()]),
            ActionSpec::observe("get_current", vec![channel_param()]),
            ActionSpec::observe("get_readings", vec![]),
            ActionSpec::observe("get_status", vec![]),
        ]
    }

    fn apply(&mut self, action: &str, params: &Params) -> Result<Value, DriverError> {
        let ch = params.channel_index("channel");
        match action {
            "set_voltage" => {
                let v = params.number("voltage");
                let c = &mut self.channels[ch];
                if v > c.max_voltage {
                    return Err(out_of_range("voltage", v, c.max_voltage, ch));
                }
                c.voltage_set = v;
                Ok(json!({"channel": ch + 1, "voltage_set": v}))
            }
            "set_current" => {
                let i = params.number("current");
                let c = &mut self.channels[ch];
                if i > c.max_current {
                    return Err(out_of_range("current", i, c.max_current, ch));
                }
                c.current_limit = i;
                Ok(json!({"channel": ch + 1, "current_limit": i}))
            }
            "set_output" => {
                let on = params.boolean("enabled");
                self.channels[ch].output = on;
                Ok(json!({"channel": ch + 1, "output": on}))
            }
            "reset" => {
                self.channels = Self::fresh_channels(self.load_ohms);
                Ok(json!({"reset": true}))
            }
            "get_voltage" => {
                Ok(json!({"channel": ch + 1, "voltage": round6(self.reading(ch).voltage)}))
            }
            "get_current" => {
                Ok(json!({"channel": ch + 1, "current": round6(self.reading(ch).current)}))
            }
            "get_readings" => Ok(json!({
                "channels": (0..self.channels.len()).map(|i| self.channel_json(i)).collect::<Vec<_>>()
            })),
            "get_status" => Ok(self.state()),
            other => Err(DriverError::Rejected(format!("unknown action {other}"))),
        }
    }

    fn state(&self) -> Value {
        json!({
            "model": self.model,
            "channels": (0..self.channels.len()).map(|i| self.channel_json(i)).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn fresh() -> Psu {
        Psu::from_config(PsuConfig::default()).unwrap()
    }

    #[test]
    fn constant_voltage_then_current_limit() {
        let mut psu = fresh();
        psu.run_json("set_voltage", &json!({"voltage": 20.0}))
            .unwrap();
        assert_eq!(psu.reading(0).voltage, 0.0, "output is off");
        psu.run_json("set_output", &json!({"enabled": true}))
            .unwrap();
        // 20 V into 10 ohms is 2 A, under the 3 A default limit.
        assert_eq!(
            psu.reading(0),
            Reading {
                voltage: 20.0,
                current: 2.0,
                mode: "CV"
            }
        );
        psu.run_json("set_current", &json!({"current": 1.0}))
            .unwrap();
        // 20 V would need 2 A: the 1 A limit holds the output at 10 V.
        assert_eq!(
            psu.reading(0),
            Reading {
                voltage: 10.0,
                current: 1.0,
                mode: "CC"
            }
        );
        psu.run_json("set_current", &json!({"current": 3.0}))
            .unwrap();
        assert_eq!(psu.reading(0).voltage, 20.0);
    }

    #[test]
    fn channel_three_is_a_five_volt_channel() {
        let mut psu = fresh();
        let err = psu
            .run_json("set_voltage", &json!({"voltage": 6.0, "channel": 3}))
            .unwrap_err();
        assert!(
            matches!(err, DriverError::InvalidParameter(ref e) if e.parameter == "voltage"),
            "{err:?}"
        );
        psu.run_json("set_voltage", &json!({"voltage": 5.0, "channel": 3}))
            .unwrap();
        psu.run_json("reset", &json!({})).unwrap();
        assert_eq!(psu, fresh());
    }
}
