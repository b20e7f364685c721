//! Action specifications and parameter validation: turns a command's raw JSON
//! `parameters` into typed values, or says which parameter is wrong and why.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::domain::Access;
use crate::domain::number::Compact;

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    Number { min: f64, max: f64 },
    Integer { min: i64, max: i64 },
    Boolean,
    Choice { values: Vec<String> },
    Text { max_len: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ParamValue {
    Number(f64),
    Integer(i64),
    Boolean(bool),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ParamSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Used when the parameter is left out; `None` makes it required.
    pub default: Option<ParamValue>,
    pub unit: Option<String>,
}

impl ParamSpec {
    pub fn number(name: &str, min: f64, max: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Number { min, max },
            default: None,
            unit: (!unit.is_empty()).then(|| unit.into()),
        }
    }

    pub fn integer(name: &str, min: i64, max: i64) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Integer { min, max },
            default: None,
            unit: None,
        }
    }

    pub fn boolean(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Boolean,
            default: None,
            unit: None,
        }
    }

    pub fn choice(name: &str, values: &[&str]) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Choice {
                values: values.iter().map(|v| v.to_string()).collect(),
            },
            default: None,
            unit: None,
        }
    }

    pub fn text(name: &str, max_len: usize) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Text { max_len },
            default: None,
            unit: None,
        }
    }

    pub fn with_default(mut self, value: ParamValue) -> Self {
        self.default = Some(value);
        self
    }

    fn parse(&self, raw: &Value) -> Result<ParamValue, String> {
        match &self.kind {
            ParamKind::Number { min, max } => {
                let v = raw.as_f64().ok_or("must be a number")?;
                if v < *min || v > *max {
                    return Err(format!(
                        "must be between {min} and {max}, got {}",
                        Compact(v)
                    ));
                }
                // -0.0 is 0: an instrument is never set to, nor answers, "-0".
                Ok(ParamValue::Number(if v == 0.0 { 0.0 } else { v }))
            }
            ParamKind::Integer { min, max } => {
                let Value::Number(n) = raw else {
                    return Err("must be a whole number".into());
                };
                let v = match n.as_i64() {
                    Some(v) => v,
                    // A whole number too large for the range (even for
                    // 64 bits) is out of range, not "not whole".
                    None => match n.as_f64().filter(|f| f.fract() == 0.0) {
                        Some(f) if f.abs() < 1e15 => f as i64,
                        Some(f) => {
                            return Err(format!(
                                "must be between {min} and {max}, got {}",
                                Compact(f)
                            ));
                        }
                        None => return Err("must be a whole number".into()),
                    },
                };
                if v < *min || v > *max {
                    return Err(format!("must be between {min} and {max}, got {v}"));
                }
                Ok(ParamValue::Integer(v))
            }
            ParamKind::Boolean => raw
                .as_bool()
                .map(ParamValue::Boolean)
                .ok_or_else(|| "must be true or false".into()),
            ParamKind::Choice { values } => {
                let v = raw.as_str().ok_or("must be a string")?;
                if values.iter().any(|allowed| allowed == v) {
                    Ok(ParamValue::Text(v.into()))
                } else {
                    Err(format!(
                        "must be one of {}, got {}",
                        values.join(", "),
                        Value::from(v)
                    ))
                }
            }
            ParamKind::Text { max_len } => {
                let v = raw.as_str().ok_or("must be a string")?;
                if v.chars().count() > *max_len {
                    return Err(format!("must be at most {max_len} characters"));
                }
                // Text goes to instruments inside one command line; a line
                // break would smuggle in a second command.
                if v.contains(['\r', '\n']) {
                    return Err("must be one line (one command per call), without CR or LF".into());
                }
                Ok(ParamValue::Text(v.into()))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ActionSpec {
    pub name: String,
    pub access: Access,
    pub params: Vec<ParamSpec>,
}

impl ActionSpec {
    pub fn new(name: &str, access: Access, params: Vec<ParamSpec>) -> Self {
        Self {
            name: name.into(),
            access,
            params,
        }
    }

    pub fn control(name: &str, params: Vec<ParamSpec>) -> Self {
        Self::new(name, Access::Control, params)
    }

    pub fn observe(name: &str, params: Vec<ParamSpec>) -> Self {
        Self::new(name, Access::Observe, params)
    }

    /// Checks `raw` against this action's parameters: every given one is
    /// known and valid, every required one is present; defaults fill the rest.
    pub fn validate(&self, raw: &Map<String, Value>) -> Result<Params, ParamError> {
        if let Some(unknown) = raw
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
            return Err(ParamError {
                parameter: unknown.clone(),
                reason: if known.is_empty() {
                    format!("is not a parameter of {}, which takes none", self.name)
                } else {
                    format!(
                        "is not a parameter of {}; expected {}",
                        self.name,
                        known.join(", ")
                    )
                },
            });
        }
        let mut values = BTreeMap::new();
        for spec in &self.params {
            let value = match (raw.get(&spec.name), &spec.default) {
                (Some(v), _) if !v.is_null() => spec.parse(v).map_err(|reason| ParamError {
                    parameter: spec.name.clone(),
                    reason,
                })?,
                (_, Some(default)) => default.clone(),
                (_, None) => {
                    return Err(ParamError {
                        parameter: spec.name.clone(),
                        reason: "is required".into(),
                    });
                }
            };
            values.insert(spec.name.clone(), value);
        }
        Ok(Params(values))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameter {} {reason}", Value::from(parameter.as_str()))]
pub struct ParamError {
    pub parameter: String,
    pub reason: String,
}

/// Validated parameters. The getters fall back to neutral values only for
/// names the action does not declare, which validation already excludes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(BTreeMap<String, ParamValue>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.0.get(name)
    }

    pub fn number(&self, name: &str) -> f64 {
        match self.0.get(name) {
            Some(ParamValue::Number(v)) => *v,
            Some(ParamValue::Integer(v)) => *v as f64,
            _ => 0.0,
        }
    }

    pub fn integer(&self, name: &str) -> i64 {
        match self.0.get(name) {
            Some(ParamValue::Integer(v)) => *v,
            Some(ParamValue::Number(v)) => *v as i64,
            _ => 0,
        }
    }

    pub fn boolean(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(ParamValue::Boolean(true)))
    }

    pub fn text(&self, name: &str) -> &str {
        match self.0.get(name) {
            Some(ParamValue::Text(v)) => v,
            _ => "",
        }
    }

    /// A channel number, as a 0-based index.
    pub fn channel_index(&self, name: &str) -> usize {
        (self.integer(name).max(1) - 1) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set_voltage() -> ActionSpec {
        ActionSpec::control(
            "set_voltage",
            vec![
                ParamSpec::number("voltage", 0.0, 30.0, "V"),
                ParamSpec::integer("channel", 1, 3).with_default(ParamValue::Integer(1)),
            ],
        )
    }

    #[test]
    fn validation_table() {
        let cases = [
            (json!({"voltage": 12.0}), Ok(())),
            (json!({"voltage": 12, "channel": 2.0}), Ok(())),
            (json!({"voltage": 12, "channel": null}), Ok(())),
            (json!({"voltage": 31}), Err("voltage")),
            (json!({"voltage": -0.1}), Err("voltage")),
            (json!({"voltage": "12"}), Err("voltage")),
            (json!({}), Err("voltage")),
            (json!({"voltage": 1, "channel": 4}), Err("channel")),
            (json!({"voltage": 1, "channel": 1.5}), Err("channel")),
            (json!({"voltage": 1, "volts": 1}), Err("volts")),
        ];
        for (raw, expected) in cases {
            let got = set_voltage()
                .validate(raw.as_object().unwrap())
                .map(|_| ())
                .map_err(|e| e.parameter);
            assert_eq!(got, expected.map_err(String::from), "{raw}");
        }
    }

    #[test]
    fn defaults_fill_missing_parameters() {
        let params = set_voltage()
            .validate(json!({"voltage": 5}).as_object().unwrap())
            .unwrap();
        assert_eq!(params.number("voltage"), 5.0);
        assert_eq!(params.channel_index("channel"), 0);
    }

    #[test]
    fn range_errors_name_the_allowed_range() {
        let err = set_voltage()
            .validate(json!({"voltage": 99}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter \"voltage\" must be between 0 and 30, got 99"
        );
    }

    #[test]
    fn text_limits_count_characters_and_messages_quote_as_json() {
        let action = ActionSpec::control(
            "say",
            vec![
                ParamSpec::text("text", 4),
                ParamSpec::choice("mode", &["CC", "CV"])
                    .with_default(ParamValue::Text("CC".into())),
            ],
        );
        let check = |raw: serde_json::Value| {
            action
                .validate(raw.as_object().unwrap())
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        // Four two-byte characters: eight bytes, within four characters.
        assert_eq!(check(json!({"text": "éééé"})), Ok(()));
        assert_eq!(
            check(json!({"text": "ééééé"})),
            Err("parameter \"text\" must be at most 4 characters".into())
        );
        assert_eq!(
            check(json!({"text": "a", "mode": "\u{202e}"})),
            Err("parameter \"mode\" must be one of CC, CV, got \"\u{202e}\"".into())
        );
    }
}
