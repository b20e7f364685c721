//! Simulated instruments. Each model (`psu`, `scope`, `load`) is a plain
//! state machine that behaves like the instrument; `SimDriver` wraps one as
//! a `Driver`. The same models back the TCP simulator (`scpi::sim`).
//! Both log under their own target, `lablink::sim`, naming the instrument.

pub mod load;
pub mod psu;
pub mod scope;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Mutex;

use super::{ActionSpec, Driver, DriverError, Params};

/// A simulated instrument's behaviour.
pub trait InstrumentModel: Send + 'static {
    /// Driver-specific configuration keys (unknown keys are refused).
    type Config: DeserializeOwned + Default;
    const DRIVER: &'static str;

    /// Builds the model, or says which setting is physically impossible
    /// (a negative load, a wrong number of channels, ...).
    fn from_config(config: Self::Config) -> Result<Self, String>
    where
        Self: Sized;
    fn model_name(&self) -> String;
    fn actions() -> Vec<ActionSpec>;
    fn apply(&mut self, action: &str, params: &Params) -> Result<Value, DriverError>;
    fn state(&self) -> Value;

    /// Validates raw JSON parameters against the action's spec, then applies
    /// it: the whole path a command takes through a simulated instrument.
    fn run_json(&mut self, action: &str, raw: &Value) -> Result<Value, DriverError> {
        let spec = Self::actions()
            .into_iter()
            .find(|a| a.name == action)
            .ok_or_else(|| DriverError::Rejected(format!("unknown action {action}")))?;
        let empty = serde_json::Map::new();
        let params = spec
            .validate(raw.as_object().unwrap_or(&empty))
            .map_err(DriverError::InvalidParameter)?;
        self.apply(action, &params)
    }
}

/// The tracing target of every simulated instrument, so their chatter can
/// be turned up or down apart from the server's (`RUST_LOG=lablink::sim=debug`).
pub const LOG_TARGET: &str = "lablink::sim";

pub struct SimDriver<M> {
    /// The equipment id, to tell instruments apart in the log.
    name: String,
    model: Mutex<M>,
    actions: Vec<ActionSpec>,
}

impl<M: InstrumentModel> SimDriver<M> {
    pub fn new(name: &str, model: M) -> Self {
        Self {
            name: name.into(),
            model: Mutex::new(model),
            actions: M::actions(),
        }
    }

    fn with_model<R>(&self, f: impl FnOnce(&mut M) -> R) -> R {
        f(&mut self.model.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl<M: InstrumentModel> Driver for SimDriver<M> {
    fn driver_name(&self) -> &'static str {
        M::DRIVER
    }

    fn model(&self) -> String {
        self.with_model(|m| m.model_name())
    }

    fn actions(&self) -> &[ActionSpec] {
        &self.actions
    }

    async fn execute(&self, action: &ActionSpec, params: &Params) -> Result<Value, DriverError> {
        let outcome = self.with_model(|m| m.apply(&action.name, params));
        match &outcome {
            Ok(_) => tracing::debug!(
                target: LOG_TARGET,
                instrument = %self.name,
                driver = M::DRIVER,
                action = %action.name,
                "action applied"
            ),
            Err(e) => tracing::debug!(
                target: LOG_TARGET,
                instrument = %self.name,
                driver = M::DRIVER,
                action = %action.name,
                error = %e,
                "action refused"
            ),
        }
        outcome
    }

    async fn state(&self) -> Value {
        self.with_model(|m| m.state())
    }
}

/// Rounds to 6 significant decimals so simulated readings look like an
/// instrument's, not like float noise.
pub(crate) fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}
