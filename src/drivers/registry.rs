//! The instruments this server serves, built once at start-up from the
//! configuration's `[[equipment]]` entries (or the three demo instruments).

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

use super::Driver;
use super::scpi::{self, ScpiConfig, ScpiTcp};
use super::sim::{InstrumentModel, SimDriver, load::Load, psu::Psu, scope::Scope};
use crate::domain::EquipmentId;
use std::path::Path;

/// The drivers a configuration may name.
pub const DRIVERS: &[&str] = &[Psu::DRIVER, Scope::DRIVER, Load::DRIVER, scpi::DRIVER];

/// One `[[equipment]]` entry: `id`, `driver`, an optional `name`, and the
/// driver's own keys in `settings`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EquipmentConfig {
    pub id: String,
    pub driver: String,
    pub name: Option<String>,
    /// Who may lock it at all (user names, or `role:<role>`); absent: anyone.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// What it is, for pools (`any_of: {"tags": [...]}`): e.g. "psu", "30V".
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// One `[[group]]` entry: instruments locked together under one id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub id: String,
    pub name: Option<String>,
    pub members: Vec<String>,
}

/// A configured lock group: acquired by its id like an instrument.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedGroup {
    pub id: EquipmentId,
    pub name: String,
    pub members: Vec<EquipmentId>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("equipment {id:?}: unknown driver {driver:?} (known drivers: {})", DRIVERS.join(", "))]
    UnknownDriver { id: String, driver: String },
    #[error("equipment {id:?} (driver {driver}): {message}")]
    BadSettings {
        id: String,
        driver: String,
        message: String,
    },
    #[error("equipment id {0:?} is used twice")]
    DuplicateId(String),
    #[error("equipment id {id:?}: {message}")]
    BadId { id: String, message: String },
    #[error("equipment {id:?}: {message}")]
    BadAllowList { id: String, message: String },
    #[error("group {id:?}: {message}")]
    BadGroup { id: String, message: String },
    #[error("equipment {id:?}: {message}")]
    BadTags { id: String, message: String },
}

/// Tags are words a pool names (`any_of: {"tags": [...]}`, `lablink run
/// --any-of tag:T,tag:U`): not empty, without commas or spaces, each once.
fn check_tags(tags: &[String]) -> Result<(), String> {
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() || tag.chars().count() > 64 {
            return Err(format!("tag {tag:?} must be 1 to 64 characters"));
        }
        if tag
            .chars()
            .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "tag {tag:?} may not hold a comma, a space or a control character"
            ));
        }
        if tags[..i].contains(tag) {
            return Err(format!("tag {tag:?} is listed twice"));
        }
    }
    Ok(())
}

/// A registered instrument. `serial` makes commands to it run one at a
/// time, in arrival order (tokio's mutex is fair).
pub struct Instrument {
    pub id: EquipmentId,
    pub name: String,
    pub driver: Arc<dyn Driver>,
    pub serial: tokio::sync::Mutex<()>,
    /// The allow list from the configuration (checked with authentication on).
    pub allow: Option<Vec<String>>,
    pub tags: Vec<String>,
}

pub struct Instruments {
    by_id: HashMap<EquipmentId, Arc<Instrument>>,
    order: Vec<EquipmentId>,
    groups: Vec<NamedGroup>,
}

fn bad_settings(config: &EquipmentConfig, message: String) -> RegistryError {
    RegistryError::BadSettings {
        id: config.id.clone(),
        driver: config.driver.clone(),
        message,
    }
}

/// The driver's own keys, checked against its configuration type.
fn settings<T: serde::de::DeserializeOwned>(config: &EquipmentConfig) -> Result<T, RegistryError> {
    toml::Value::Table(config.settings.clone())
        .try_into()
        .map_err(|e: toml::de::Error| bad_settings(config, e.message().to_string()))
}

fn sim<M: InstrumentModel>(config: &EquipmentConfig) -> Result<Arc<dyn Driver>, RegistryError> {
    let model =
        M::from_config(settings(config)?).map_err(|message| bad_settings(config, message))?;
    Ok(Arc::new(SimDriver::new(&config.id, model)))
}

fn build_driver(config: &EquipmentConfig, base: &Path) -> Result<Arc<dyn Driver>, RegistryError> {
    match config.driver.as_str() {
        Psu::DRIVER => sim::<Psu>(config),
        Scope::DRIVER => sim::<Scope>(config),
        Load::DRIVER => sim::<Load>(config),
        scpi::DRIVER => {
            let driver = ScpiTcp::new(settings::<ScpiConfig>(config)?, base)
                .map_err(|message| bad_settings(config, message))?;
            Ok(Arc::new(driver))
        }
        _ => Err(RegistryError::UnknownDriver {
            id: config.id.clone(),
            driver: config.driver.clone(),
        }),
    }
}

impl Instruments {
    /// Builds every instrument; relative file names in their settings (SCPI
    /// profiles) are taken under `base`, the config file's directory.
    pub fn from_configs(configs: &[EquipmentConfig], base: &Path) -> Result<Self, RegistryError> {
        let mut by_id = HashMap::new();
        let mut order = Vec::new();
        for config in configs {
            let id = EquipmentId::parse(&config.id).map_err(|e| RegistryError::BadId {
                id: config.id.clone(),
                message: e.to_string(),
            })?;
            if let Some(allow) = &config.allow {
                crate::domain::access::check_allow_list(allow).map_err(|message| {
                    RegistryError::BadAllowList {
                        id: config.id.clone(),
                        message,
                    }
                })?;
            }
            check_tags(&config.tags).map_err(|message| RegistryError::BadTags {
                id: config.id.clone(),
                message,
            })?;
            let driver = build_driver(config, base)?;
            let instrument = Instrument {
                id: id.clone(),
                name: config.name.clone().unwrap_or_else(|| config.id.clone()),
                driver,
                serial: tokio::sync::Mutex::new(()),
                allow: config.allow.clone(),
                tags: config.tags.clone(),
            };
            if by_id.insert(id.clone(), Arc::new(instrument)).is_some() {
                return Err(RegistryError::DuplicateId(config.id.clone()));
            }
            order.push(id);
        }
        Ok(Self {
            by_id,
            order,
            groups: Vec::new(),
        })
    }

    /// Adds the configured `[[group]]`s: each id unique among instruments
    /// and groups, each member a distinct configured instrument.
    pub fn with_groups(mut self, configs: &[GroupConfig]) -> Result<Self, RegistryError> {
        for config in configs {
            let bad = |message: String| RegistryError::BadGroup {
                id: config.id.clone(),
                message,
            };
            let id = EquipmentId::parse(&config.id).map_err(|e| bad(e.to_string()))?;
            if self.contains(&id) || self.group(&id).is_some() {
                return Err(bad(
                    "the id is already used by an instrument or a group".into()
                ));
            }
            if config.members.is_empty() {
                return Err(bad("`members` lists no instrument".into()));
            }
            let mut members: Vec<EquipmentId> = Vec::new();
            for raw in &config.members {
                let member = EquipmentId::parse(raw)
                    .ok()
                    .filter(|m| self.contains(m))
                    .ok_or_else(|| bad(format!("member {raw:?} is not a configured instrument")))?;
                if members.contains(&member) {
                    return Err(bad(format!("member {raw:?} is listed twice")));
                }
                members.push(member);
            }
            self.groups.push(NamedGroup {
                name: config.name.clone().unwrap_or_else(|| config.id.clone()),
                id,
                members,
            });
        }
        Ok(self)
    }

    /// A configured group by id.
    pub fn group(&self, id: &EquipmentId) -> Option<&NamedGroup> {
        self.groups.iter().find(|g| &g.id == id)
    }

    /// The configured groups, in configuration order.
    pub fn groups(&self) -> &[NamedGroup] {
        &self.groups
    }

    /// The instruments that have every one of `tags`, in configuration order.
    pub fn tagged(&self, tags: &[String]) -> Vec<EquipmentId> {
        self.iter()
            .filter(|i| tags.iter().all(|t| i.tags.contains(t)))
            .map(|i| i.id.clone())
            .collect()
    }

    /// The three simulated instruments of the brief's examples.
    pub fn demo_configs() -> Vec<EquipmentConfig> {
        let entry = |id: &str, driver: &str, name: &str| EquipmentConfig {
            id: id.into(),
            driver: driver.into(),
            name: Some(name.into()),
            allow: None,
            tags: Vec::new(),
            settings: toml::Table::new(),
        };
        vec![
            entry("ps_abc123", Psu::DRIVER, "Demo power supply"),
            entry("scope_123", Scope::DRIVER, "Demo oscilloscope"),
            entry("load_1", Load::DRIVER, "Demo electronic load"),
        ]
    }

    pub fn get(&self, id: &EquipmentId) -> Option<&Arc<Instrument>> {
        self.by_id.get(id)
    }

    pub fn contains(&self, id: &EquipmentId) -> bool {
        self.by_id.contains_key(id)
    }

    /// In configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Instrument>> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Instruments, RegistryError> {
        #[derive(Deserialize)]
        struct File {
            equipment: Vec<EquipmentConfig>,
        }
        let file: File = toml::from_str(raw).unwrap();
        Instruments::from_configs(&file.equipment, Path::new("."))
    }

    #[test]
    fn tags_are_words_listed_once() {
        let with = |tags: &str| {
            parse(&format!(
                "[[equipment]]\nid='a'\ndriver='sim-psu'\ntags={tags}"
            ))
            .err()
        };
        assert_eq!(with(r#"["psu", "30V"]"#), None);
        for bad in [r#"[""]"#, r#"["a,b"]"#, r#"["a b"]"#, r#"["psu", "psu"]"#] {
            assert!(
                matches!(with(bad), Some(RegistryError::BadTags { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_config_names_drivers_and_their_keys() {
        let ok = parse(
            r#"
            [[equipment]]
            id = "psu1"
            driver = "sim-psu"
            name = "Bench 3"
            load_ohms = [5.0, 10.0, 2.0]
            "#,
        )
        .unwrap();
        assert_eq!(ok.iter().next().unwrap().name, "Bench 3");

        let unknown_key = parse("[[equipment]]\nid='a'\ndriver='sim-psu'\nvoltage=3")
            .err()
            .unwrap();
        assert!(
            unknown_key.to_string().contains("unknown field `voltage`"),
            "{unknown_key}"
        );
        let unknown_driver = parse("[[equipment]]\nid='a'\ndriver='visa'").err().unwrap();
        assert!(
            unknown_driver
                .to_string()
                .contains("unknown driver \"visa\""),
            "{unknown_driver}"
        );
        let twice = parse(
            "[[equipment]]\nid='a'\ndriver='sim-load'\n[[equipment]]\nid='a'\ndriver='sim-load'",
        );
        assert_eq!(twice.err(), Some(RegistryError::DuplicateId("a".into())));
    }
}
