//! Profiles: how LabLink actions become SCPI. A profile is TOML: for each
//! action, its access class, typed parameters with ranges, and the steps to
//! run, each a `write` or a `query` whose reply is read as a number,
//! boolean, string, list or block and stored under a `key` of the result.
//! Built-in profiles `psu`, `scope` and `load` cover the simulated
//! drivers' actions; a lab adds its own as a file.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

use super::codec::ReplyKind;
use super::template::Template;
use crate::domain::Access;
use crate::drivers::{ActionSpec, ParamKind, ParamSpec, ParamValue};

pub const BUILTIN: &[(&str, &str)] = &[
    ("psu", include_str!("profiles/psu.toml")),
    ("scope", include_str!("profiles/scope.toml")),
    ("load", include_str!("profiles/load.toml")),
];

/// The raw-access actions every SCPI instrument has.
pub const RAW_WRITE: &str = "scpi_write";
pub const RAW_QUERY: &str = "scpi_query";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    check_errors: bool,
    actions: BTreeMap<String, ActionDef>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionDef {
    access: Access,
    #[serde(default)]
    params: Vec<ParamDef>,
    steps: Vec<StepDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamDef {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    min: Option<f64>,
    max: Option<f64>,
    values: Option<Vec<String>>,
    max_len: Option<usize>,
    default: Option<toml::Value>,
    unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    write: Option<String>,
    query: Option<String>,
    reply: Option<ReplyKind>,
    key: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Write(Template),
    Query {
        command: Template,
        reply: ReplyKind,
        /// Where the value goes in the result; dots nest (`ch1.voltage`).
        key: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProfileAction {
    pub spec: ActionSpec,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    /// Ask `SYST:ERR?` after every action that writes.
    pub check_errors: bool,
    pub actions: Vec<ProfileAction>,
}

fn param_spec(action: &str, def: ParamDef) -> Result<ParamSpec, String> {
    let ctx = |what: &str| format!("action {action}, parameter {}: {what}", def.name);
    let range = |def: &ParamDef| match (def.min, def.max) {
        (Some(min), Some(max)) if min <= max => Ok((min, max)),
        _ => Err(ctx("needs min <= max")),
    };
    let kind = match def.kind.as_str() {
        "number" => {
            let (min, max) = range(&def)?;
            ParamKind::Number { min, max }
        }
        "integer" => {
            let (min, max) = range(&def)?;
            ParamKind::Integer {
                min: min as i64,
                max: max as i64,
            }
        }
        "boolean" => ParamKind::Boolean,
        "choice" => ParamKind::Choice {
            values: def
                .values
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ctx("a choice needs values"))?,
        },
        "text" => ParamKind::Text {
            max_len: def.max_len.unwrap_or(256),
        },
        other => {
            return Err(ctx(&format!(
                "unknown type {other:?} (number, integer, boolean, choice, text)"
            )));
        }
    };
    let default = match (&def.default, &kind) {
        (None, _) => None,
        (Some(toml::Value::Integer(i)), ParamKind::Integer { .. }) => Some(ParamValue::Integer(*i)),
        (Some(toml::Value::Integer(i)), ParamKind::Number { .. }) => {
            Some(ParamValue::Number(*i as f64))
        }
        (Some(toml::Value::Float(f)), ParamKind::Number { .. }) => Some(ParamValue::Number(*f)),
        (Some(toml::Value::Boolean(b)), ParamKind::Boolean) => Some(ParamValue::Boolean(*b)),
        (Some(toml::Value::String(s)), ParamKind::Choice { .. } | ParamKind::Text { .. }) => {
            Some(ParamValue::Text(s.clone()))
        }
        (Some(other), _) => {
            return Err(ctx(&format!(
                "default {other} does not fit type {}",
                def.kind
            )));
        }
    };
    Ok(ParamSpec {
        name: def.name,
        kind,
        default,
        unit: def.unit,
    })
}

fn step(action: &str, params: &[ParamSpec], def: StepDef) -> Result<Step, String> {
    let step = match def {
        StepDef {
            write: Some(w),
            query: None,
            reply: None,
            key: None,
        } => Step::Write(Template::parse(&w)?),
        StepDef {
            write: None,
            query: Some(q),
            reply: Some(reply),
            key: Some(key),
        } => Step::Query {
            command: Template::parse(&q)?,
            reply,
            key,
        },
        _ => {
            return Err(format!(
                "action {action}: each step is either {{ write = \"...\" }} or {{ query = \"...\", reply = \"number|boolean|string|list|block|block_f32\", key = \"...\" }}"
            ));
        }
    };
    let template = match &step {
        Step::Write(t) | Step::Query { command: t, .. } => t,
    };
    if let Some(unknown) = template
        .placeholders()
        .find(|p| !params.iter().any(|s| s.name == *p))
    {
        return Err(format!(
            "action {action}: {{{unknown}}} in {:?} is not one of its parameters",
            template.source()
        ));
    }
    Ok(step)
}

/// The actions every SCPI instrument offers for raw access (control only).
fn raw_actions() -> Vec<ProfileAction> {
    let command = || vec![ParamSpec::text("command", 4096)];
    let template = Template::parse("{command}").expect("a valid template");
    vec![
        ProfileAction {
            spec: ActionSpec::control(RAW_WRITE, command()),
            steps: vec![Step::Write(template.clone())],
        },
        ProfileAction {
            spec: ActionSpec::control(RAW_QUERY, command()),
            steps: vec![Step::Query {
                command: template,
                reply: ReplyKind::String,
                key: "reply".into(),
            }],
        },
    ]
}

impl Profile {
    pub fn parse(name: &str, text: &str) -> Result<Self, String> {
        let file: ProfileFile =
            toml::from_str(text).map_err(|e| format!("profile {name}: {}", e.message()))?;
        let mut actions = Vec::new();
        for (action, def) in file.actions {
            if action == RAW_WRITE || action == RAW_QUERY {
                return Err(format!(
                    "profile {name}: {action} is built in and cannot be redefined"
                ));
            }
            if def.steps.is_empty() {
                return Err(format!("profile {name}: action {action} has no steps"));
            }
            let params = def
                .params
                .into_iter()
                .map(|p| param_spec(&action, p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("profile {name}: {e}"))?;
            let steps = def
                .steps
                .into_iter()
                .map(|s| step(&action, &params, s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("profile {name}: {e}"))?;
            actions.push(ProfileAction {
                spec: ActionSpec::new(&action, def.access, params),
                steps,
            });
        }
        actions.extend(raw_actions());
        Ok(Self {
            name: name.into(),
            description: file.description,
            check_errors: file.check_errors,
            actions,
        })
    }

    /// A built-in profile by name, or a TOML file (relative to `base`).
    pub fn load(name_or_path: &str, base: &Path) -> Result<Self, String> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(name_or_path, text);
        }
        let path = base.join(name_or_path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            format!(
                "profile {name_or_path:?} is neither built in ({}) nor a readable file ({}: {e})",
                names.join(", "),
                path.display()
            )
        })?;
        Self::parse(name_or_path, &text)
    }

    pub fn action(&self, name: &str) -> Option<&ProfileAction> {
        self.actions.iter().find(|a| a.spec.name == name)
    }
}

/// Puts `value` at a dotted `key` of `result`.
pub fn insert_at(result: &mut Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            result.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = result
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !inner.is_object() {
                *inner = Value::Object(Map::new());
            }
            if let Value::Object(map) = inner {
                insert_at(map, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_profiles_cover_the_simulated_drivers_actions() {
        use crate::drivers::sim::{InstrumentModel, load::Load, psu::Psu, scope::Scope};
        for (name, sim_actions) in [
            ("psu", Psu::actions()),
            ("scope", Scope::actions()),
            ("load", Load::actions()),
        ] {
            let profile = Profile::load(name, Path::new(".")).unwrap();
            for sim in sim_actions {
                let action = profile
                    .action(&sim.name)
                    .unwrap_or_else(|| panic!("{name} lacks {}", sim.name));
                assert_eq!(action.spec, sim, "{name}: {} is declared alike", sim.name);
            }
            assert!(profile.action(RAW_WRITE).is_some() && profile.action(RAW_QUERY).is_some());
        }
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let cases = [
            (
                "[actions.a]\naccess = 'control'\nsteps = [{ write = 'X {v}' }]",
                "{v}",
            ),
            (
                "[actions.a]\naccess = 'root'\nsteps = [{ write = 'X' }]",
                "root",
            ),
            (
                "[actions.a]\naccess = 'control'\nsteps = [{ query = 'X?' }]",
                "either",
            ),
            ("[actions.a]\naccess = 'control'\nsteps = []", "no steps"),
            (
                "[actions.a]\naccess = 'control'\nparams = [{ name = 'v', type = 'number' }]\nsteps = [{ write = 'X {v}' }]",
                "min <= max",
            ),
            (
                "[actions.scpi_write]\naccess = 'control'\nsteps = [{ write = 'X' }]",
                "built in",
            ),
            (
                "[actions.a]\naccess = 'control'\nsteps = [{ write = 'X', extra = 1 }]",
                "extra",
            ),
        ];
        for (text, expected) in cases {
            let err = Profile::parse("custom", text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(
            Profile::load("nope.toml", Path::new("/nonexistent"))
                .unwrap_err()
                .contains("neither built in")
        );
    }

    #[test]
    fn the_readme_profile_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("# keysight-e36313a.toml")
            .expect("the example is in the README");
        let end = start + readme[start..].find("```").expect("the example ends");
        let profile = Profile::parse("readme", &readme[start..end]).unwrap();
        let names: Vec<&str> = profile
            .actions
            .iter()
            .map(|a| a.spec.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "get_readings",
                "get_trace",
                "identify",
                "set_mode",
                "set_output",
                "set_voltage",
                "scpi_write",
                "scpi_query"
            ]
        );
    }

    #[test]
    fn dotted_keys_nest() {
        let mut m = Map::new();
        insert_at(&mut m, "ch1.voltage", Value::from(1.0));
        insert_at(&mut m, "ch1.current", Value::from(0.5));
        insert_at(&mut m, "idn", Value::from("x"));
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"ch1": {"voltage": 1.0, "current": 0.5}, "idn": "x"})
        );
    }
}
