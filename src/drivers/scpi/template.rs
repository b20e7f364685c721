//! Command templates such as `SOUR{channel}:VOLT {voltage}`: rendered with
//! an action's parameters by the driver, and matched against incoming
//! commands by the simulator. Pure text handling.

use std::collections::BTreeMap;

use crate::drivers::{ParamValue, Params};

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {source:?}"))?;
            let name = &rest[open + 1..open + close];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad placeholder {{{name}}} in {source:?}"));
            }
            if matches!(parts.last(), Some(Part::Placeholder(_))) {
                return Err(format!("two placeholders in a row in {source:?}"));
            }
            parts.push(Part::Placeholder(name.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray }} in {source:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if source.contains('\n') {
            return Err(format!("a command may not contain a newline: {source:?}"));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The command with each `{name}` replaced by that parameter, formatted
    /// as SCPI expects (booleans as ON/OFF).
    pub fn render(&self, params: &Params) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.clone(),
                Part::Placeholder(name) => match params.get(name) {
                    Some(ParamValue::Number(v)) => format!("{v}"),
                    Some(ParamValue::Integer(v)) => v.to_string(),
                    Some(ParamValue::Boolean(v)) => (if *v { "ON" } else { "OFF" }).into(),
                    Some(ParamValue::Text(v)) => v.clone(),
                    None => String::new(),
                },
            })
            .collect()
    }

    /// Matches `command` (case-insensitively on the literal parts), returning
    /// the text each placeholder stands for.
    pub fn matches(&self, command: &str) -> Option<BTreeMap<String, String>> {
        let mut captures = BTreeMap::new();
        let mut rest = command.trim();
        let mut parts = self.parts.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                Part::Literal(text) => {
                    let head = rest.get(..text.len())?;
                    if !head.eq_ignore_ascii_case(text) {
                        return None;
                    }
                    rest = &rest[text.len()..];
                }
                Part::Placeholder(name) => {
                    let end = match parts.peek() {
                        Some(Part::Literal(next)) => find_ignore_case(rest, next)?,
                        _ => rest.len(),
                    };
                    if end == 0 {
                        return None;
                    }
                    captures.insert(name.clone(), rest[..end].trim().to_owned());
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(captures)
    }
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.to_ascii_uppercase(), needle.to_ascii_uppercase());
    h.find(&n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::{ActionSpec, ParamSpec};
    use serde_json::json;

    #[test]
    fn render_and_match_are_inverse() {
        let t = Template::parse("SOUR{channel}:VOLT {voltage}").unwrap();
        assert_eq!(t.placeholders().collect::<Vec<_>>(), ["channel", "voltage"]);
        let spec = ActionSpec::control(
            "set_voltage",
            vec![
                ParamSpec::number("voltage", 0.0, 30.0, "V"),
                ParamSpec::integer("channel", 1, 3),
            ],
        );
        let params = spec
            .validate(json!({"voltage": 12.5, "channel": 2}).as_object().unwrap())
            .unwrap();
        assert_eq!(t.render(&params), "SOUR2:VOLT 12.5");
        let got = t.matches("sour2:volt 12.5").unwrap();
        assert_eq!(got["channel"], "2");
        assert_eq!(got["voltage"], "12.5");
        assert!(t.matches("SOUR2:CURR 1").is_none());
        assert!(
            t.matches("SOUR:VOLT 1").is_none(),
            "a placeholder needs text"
        );
        assert!(Template::parse("*IDN?").unwrap().matches("*idn?").is_some());
        let on = ActionSpec::control("o", vec![ParamSpec::boolean("enabled")]);
        let p = on
            .validate(json!({"enabled": true}).as_object().unwrap())
            .unwrap();
        assert_eq!(
            Template::parse("OUTP {enabled}").unwrap().render(&p),
            "OUTP ON"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "VOLT {voltage",
            "VOLT }",
            "VOLT {}",
            "A{a}{b}",
            "VOLT {vol tage}",
            "A\nB",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
