//! A simulated four-channel oscilloscope watching fixed test signals
//! (1 kHz sine, 1 kHz 3.3 V square, 500 Hz triangle, 10 kHz small sine).
//! Waveforms are sampled over the 10 horizontal divisions set by the
//! timebase, triggered on a rising crossing of the trigger level, and
//! clipped to the 8 vertical divisions set by each channel's scale.
//! Running acquisitions add a little noise that changes on every capture;
//! a stopped or single acquisition keeps returning the same capture.

use serde::Deserialize;
use serde_json::{Value, json};
use std::f64::consts::TAU;

use super::{InstrumentModel, round6};
use crate::drivers::{ActionSpec, DriverError, ParamSpec, Params};

const CHANNELS: usize = 4;
const SAMPLES: usize = 1000;
const H_DIVS: f64 = 10.0;
const V_DIVS: f64 = 8.0;
const MEASUREMENTS: &[&str] = &[
    "vpp",
    "vmax",
    "vmin",
    "vavg",
    "vrms",
    "amplitude",
    "frequency",
    "period",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Sine,
    Square,
    Triangle,
}

/// A test signal: `offset + amplitude * shape(frequency * t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Signal {
    shape: Shape,
    frequency: f64,
    amplitude: f64,
    offset: f64,
}

impl Signal {
    /// The signal at phase `cycles` (in periods).
    fn at_phase(&self, cycles: f64) -> f64 {
        let p = cycles.rem_euclid(1.0);
        let unit = match self.shape {
            Shape::Sine => (TAU * p).sin(),
            Shape::Square => {
                if p < 0.5 {
                    1.0
                } else {
                    -1.0
                }
            }
            Shape::Triangle => {
                if p < 0.25 {
                    4.0 * p
                } else if p < 0.75 {
                    2.0 - 4.0 * p
                } else {
                    4.0 * p - 4.0
                }
            }
        };
        self.offset + self.amplitude * unit
    }

    /// The phase of the first rising crossing of `level`, if there is one.
    fn rising_crossing(&self, level: f64) -> Option<f64> {
        let (lo, hi) = (self.offset - self.amplitude, self.offset + self.amplitude);
        if level <= lo || level >= hi {
            return None;
        }
        let x = (level - self.offset) / self.amplitude; // in (-1, 1)
        Some(match self.shape {
            Shape::Sine => (x.asin() / TAU).rem_euclid(1.0),
            Shape::Square => 0.0,
            Shape::Triangle => (x / 4.0).rem_euclid(1.0),
        })
    }
}

const SIGNALS: [Signal; CHANNELS] = [
    Signal {
        shape: Shape::Sine,
        frequency: 1_000.0,
        amplitude: 1.0,
        offset: 0.0,
    },
    Signal {
        shape: Shape::Square,
        frequency: 1_000.0,
        amplitude: 1.65,
        offset: 1.65,
    },
    Signal {
        shape: Shape::Triangle,
        frequency: 500.0,
        amplitude: 0.5,
        offset: 0.0,
    },
    Signal {
        shape: Shape::Sine,
        frequency: 10_000.0,
        amplitude: 0.2,
        offset: 0.0,
    },
];

#[derive(Debug, Clone, PartialEq)]
struct Channel {
    enabled: bool,
    volts_per_div: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Acquisition {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    model: String,
    seconds_per_div: f64,
    channels: Vec<Channel>,
    trigger_channel: usize,
    trigger_level: f64,
    acquisition: Acquisition,
    capture: u64,
}

/// A deterministic pseudo-random number in [-1, 1) (splitmix64).
fn noise(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// The nearest 1-2-5 step at or above `x`.
fn step_125(x: f64) -> f64 {
    let decade = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * decade)
        .find(|v| *v >= x * 0.999_999)
        .unwrap_or(10.0 * decade)
}

impl Scope {
    fn fresh(model: String) -> Self {
        Self {
            model,
            seconds_per_div: 2e-4,
            channels: (0..CHANNELS)
                .map(|i| Channel {
                    enabled: i < 2,
                    volts_per_div: 1.0,
                })
                .collect(),
            trigger_channel: 0,
            trigger_level: 0.0,
            acquisition: Acquisition::Running,
            capture: 0,
        }
    }

    fn x_origin(&self) -> f64 {
        -H_DIVS / 2.0 * self.seconds_per_div
    }

    fn x_increment(&self) -> f64 {
        H_DIVS * self.seconds_per_div / SAMPLES as f64
    }

    /// Samples of channel `ch` in volts, clipped to the screen.
    fn samples(&self, ch: usize) -> Vec<f64> {
        let trigger = SIGNALS[self.trigger_channel];
        // Time 0 is the trigger point: a rising crossing of the level on the
        // trigger channel, or free-running from phase 0 if there is none.
        let t0 = trigger
            .rising_crossing(self.trigger_level)
            .map_or(0.0, |phase| phase / trigger.frequency);
        let signal = SIGNALS[ch];
        let limit = V_DIVS / 2.0 * self.channels[ch].volts_per_div;
        let noise_amplitude = 0.01 * self.channels[ch].volts_per_div;
        (0..SAMPLES)
            .map(|i| {
                let t = t0 + self.x_origin() + i as f64 * self.x_increment();
                let seed = self.capture.wrapping_mul(1_000_003) ^ ((ch * SAMPLES + i) as u64);
                let v = signal.at_phase(signal.frequency * t) + noise_amplitude * noise(seed);
                round6(v.clamp(-limit, limit))
            })
            .collect()
    }

    fn enabled_channel(&self, params: &Params) -> Result<usize, DriverError> {
        let ch = params.channel_index("channel");
        if !self.channels[ch].enabled {
            return Err(DriverError::Rejected(format!(
                "channel {} is switched off: enable it with set_channel first",
                ch + 1
            )));
        }
        Ok(ch)
    }

    fn capture_next(&mut self) {
        if self.acquisition == Acquisition::Running {
            self.capture += 1;
        }
    }

    fn measure(&self, ch: usize, kind: &str) -> Result<f64, DriverError> {
        let samples = self.samples(ch);
        let n = samples.len() as f64;
        let max = samples.iter().copied().fold(f64::MIN, f64::max);
        let min = samples.iter().copied().fold(f64::MAX, f64::min);
        let frequency = SIGNALS[ch].frequency;
        let window = H_DIVS * self.seconds_per_div;
        Ok(match kind {
            "vpp" => max - min,
            "vmax" => max,
            "vmin" => min,
            "amplitude" => (max - min) / 2.0,
            "vavg" => samples.iter().sum::<f64>() / n,
            "vrms" => (samples.iter().map(|v| v * v).sum::<f64>() / n).sqrt(),
            "frequency" | "period" => {
                if window * frequency < 1.0 {
                    return Err(DriverError::Rejected(
                        "less than one period on screen: increase the timebase to measure frequency"
                            .into(),
                    ));
                }
                if kind == "frequency" {
                    frequency
                } else {
                    1.0 / frequency
                }
            }
            _ => unreachable!("validated against MEASUREMENTS"),
        })
    }

    fn autoscale(&mut self) {
        for (ch, channel) in self.channels.iter_mut().enumerate() {
            let s = SIGNALS[ch];
            let peak = (s.offset.abs() + s.amplitude).max(1e-3);
            // The whole signal within about 6 of the 8 divisions.
            channel.volts_per_div = step_125(peak / 3.0);
        }
        let slowest = SIGNALS
            .iter()
            .zip(&self.channels)
            .filter(|(_, c)| c.enabled)
            .map(|(s, _)| s.frequency)
            .fold(f64::MAX, f64::min);
        let slowest = if slowest == f64::MAX {
            SIGNALS[0].frequency
        } else {
            slowest
        };
        // About two periods of the slowest enabled signal across the screen.
        self.seconds_per_div = step_125(2.0 / slowest / H_DIVS);
        let first = self.channels.iter().position(|c| c.enabled).unwrap_or(0);
        self.trigger_channel = first;
        self.trigger_level = SIGNALS[first].offset;
        self.acquisition = Acquisition::Running;
    }
}

fn channel_param() -> ParamSpec {
    ParamSpec::integer("channel", 1, CHANNELS as i64)
}

impl InstrumentModel for Scope {
    type Config = ScopeConfig;
    const DRIVER: &'static str = "sim-scope";

    fn from_config(config: ScopeConfig) -> Result<Self, String> {
        Ok(Self::fresh(
            config
                .model
                .unwrap_or_else(|| "LabLink SimScope 1104".into()),
        ))
    }

    fn model_name(&self) -> String {
        self.model.clone()
    }

    fn actions() -> Vec<ActionSpec> {
        vec![
            ActionSpec::control(
                "set_timebase",
                vec![ParamSpec::number("seconds_per_div", 1e-9, 50.0, "s/div")],
            ),
            ActionSpec::control(
                "set_scale",
                vec![
                    channel_param(),
                    ParamSpec::number("volts_per_div", 1e-3, 10.0, "V/div"),
                ],
            ),
            ActionSpec::control(
                "set_trigger",
                vec![
                    channel_param(),
                    ParamSpec::number("level", -40.0, 40.0, "V"),
                ],
            ),
            ActionSpec::control(
                "set_channel",
                vec![channel_param(), ParamSpec::boolean("enabled")],
            ),
            ActionSpec::control("trigger_single", vec![]),
            ActionSpec::control("trigger_run", vec![]),
            ActionSpec::control("trigger_stop", vec![]),
            ActionSpec::control("autoscale", vec![]),
            ActionSpec::control("reset", vec![]),
            ActionSpec::observe("get_waveform", vec![channel_param()]),
            ActionSpec::observe(
                "get_measurement",
                vec![channel_param(), ParamSpec::choice("kind", MEASUREMENTS)],
            ),
            ActionSpec::observe("get_status", vec![]),
        ]
    }

    fn apply(&mut self, action: &str, params: &Params) -> Result<Value, DriverError> {
        match action {
            "set_timebase" => {
                self.seconds_per_div = params.number("seconds_per_div");
                Ok(json!({"seconds_per_div": self.seconds_per_div}))
            }
            "set_scale" => {
                let ch = params.channel_index("channel");
                self.channels[ch].volts_per_div = params.number("volts_per_div");
                Ok(json!({"channel": ch + 1, "volts_per_div": self.channels[ch].volts_per_div}))
            }
            "set_trigger" => {
                self.trigger_channel = params.channel_index("channel");
                self.trigger_level = params.number("level");
                Ok(json!({"channel": self.trigger_channel + 1, "level": self.trigger_level}))
            }
            "set_channel" => {
                let ch = params.channel_index("channel");
                self.channels[ch].enabled = params.boolean("enabled");
                Ok(json!({"channel": ch + 1, "enabled": self.channels[ch].enabled}))
            }
            "trigger_single" => {
                // One fresh capture, then hold it.
                self.capture += 1;
                self.acquisition = Acquisition::Stopped;
                Ok(json!({"acquisition": "stopped", "captured": true}))
            }
            "trigger_run" => {
                self.acquisition = Acquisition::Running;
                Ok(json!({"acquisition": "running"}))
            }
            "trigger_stop" => {
                self.acquisition = Acquisition::Stopped;
                Ok(json!({"acquisition": "stopped"}))
            }
            "autoscale" => {
                self.autoscale();
                Ok(self.state())
            }
            "reset" => {
                *self = Self::fresh(self.model.clone());
                Ok(json!({"reset": true}))
            }
            "get_waveform" => {
                let ch = self.enabled_channel(params)?;
                self.capture_next();
                Ok(json!({
                    "channel": ch + 1,
                    "points": SAMPLES,
                    "x_origin": self.x_origin(),
                    "x_increment": self.x_increment(),
                    "x_unit": "s",
                    "y_unit": "V",
                    "volts_per_div": self.channels[ch].volts_per_div,
                    "seconds_per_div": self.seconds_per_div,
                    "samples": self.samples(ch),
                }))
            }
            "get_measurement" => {
                let ch = self.enabled_channel(params)?;
                let kind = params.text("kind");
                self.capture_next();
                let value = round6(self.measure(ch, kind)?);
                let unit = match kind {
                    "frequency" => "Hz",
                    "period" => "s",
                    _ => "V",
                };
                Ok(json!({"channel": ch + 1, "kind": kind, "value": value, "unit": unit}))
            }
            "get_status" => Ok(self.state()),
            other => Err(DriverError::Rejected(format!("unknown action {other}"))),
        }
    }

    fn state(&self) -> Value {
        json!({
            "model": self.model,
            "seconds_per_div": self.seconds_per_div,
            "acquisition": match self.acquisition {
                Acquisition::Running => "running",
                Acquisition::Stopped => "stopped",
            },
            "trigger": {"channel": self.trigger_channel + 1, "level": self.trigger_level},
            "channels": self.channels.iter().enumerate().map(|(i, c)| json!({
                "channel": i + 1,
                "enabled": c.enabled,
                "volts_per_div": c.volts_per_div,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_waveform_follows_timebase_scale_and_trigger() {
        let mut scope = Scope::from_config(ScopeConfig::default()).unwrap();
        let w = scope
            .run_json("get_waveform", &json!({"channel": 1}))
            .unwrap();
        let samples: Vec<f64> = serde_json::from_value(w["samples"].clone()).unwrap();
        assert_eq!(samples.len(), SAMPLES);
        // 0.2 ms/div over 10 divisions shows two periods of the 1 kHz sine:
        // the middle sample is the trigger point, a rising zero crossing.
        assert!(
            samples[SAMPLES / 2].abs() < 0.05,
            "{}",
            samples[SAMPLES / 2]
        );
        assert!(samples[SAMPLES / 2 + 10] > samples[SAMPLES / 2]);
        let vpp = scope
            .run_json("get_measurement", &json!({"channel": 1, "kind": "vpp"}))
            .unwrap();
        assert!((vpp["value"].as_f64().unwrap() - 2.0).abs() < 0.05, "{vpp}");

        // A 0.1 V/div scale clips the 1 V sine at 4 divisions.
        scope
            .run_json("set_scale", &json!({"channel": 1, "volts_per_div": 0.1}))
            .unwrap();
        let vmax = scope
            .run_json("get_measurement", &json!({"channel": 1, "kind": "vmax"}))
            .unwrap();
        assert_eq!(vmax["value"].as_f64().unwrap(), 0.4);
    }

    #[test]
    fn frequency_needs_a_period_on_screen_and_autoscale_provides_it() {
        let mut scope = Scope::from_config(ScopeConfig::default()).unwrap();
        scope
            .run_json("set_timebase", &json!({"seconds_per_div": 1e-6}))
            .unwrap();
        let err = scope.run_json(
            "get_measurement",
            &json!({"channel": 1, "kind": "frequency"}),
        );
        assert!(matches!(err, Err(DriverError::Rejected(_))));
        scope.run_json("autoscale", &json!({})).unwrap();
        let f = scope
            .run_json(
                "get_measurement",
                &json!({"channel": 1, "kind": "frequency"}),
            )
            .unwrap();
        assert_eq!(f["value"], json!(1000.0));
    }

    #[test]
    fn stopped_acquisitions_repeat_running_ones_change() {
        let mut scope = Scope::from_config(ScopeConfig::default()).unwrap();
        let a = scope
            .run_json("get_waveform", &json!({"channel": 1}))
            .unwrap();
        let b = scope
            .run_json("get_waveform", &json!({"channel": 1}))
            .unwrap();
        assert_ne!(a["samples"], b["samples"]);
        scope.run_json("trigger_stop", &json!({})).unwrap();
        let c = scope
            .run_json("get_waveform", &json!({"channel": 1}))
            .unwrap();
        let d = scope
            .run_json("get_waveform", &json!({"channel": 1}))
            .unwrap();
        assert_eq!(c["samples"], d["samples"]);
        let off = scope.run_json("get_waveform", &json!({"channel": 3}));
        assert!(matches!(off, Err(DriverError::Rejected(_))));
    }
}
