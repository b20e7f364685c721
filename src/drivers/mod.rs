//! Instruments: the `Driver` trait, the action catalogue each driver
//! declares (control or observe, typed parameters with ranges), parameter
//! validation, and the registry built from the configuration.
//!
//! Drivers know nothing about locks or sessions; the service asks the
//! domain first and only then calls a driver.

pub mod params;
pub mod registry;
pub mod scpi;
pub mod sim;

use async_trait::async_trait;
use serde_json::Value;

pub use crate::domain::Access;
pub use params::{ActionSpec, ParamError, ParamKind, ParamSpec, ParamValue, Params};
pub use registry::{EquipmentConfig, GroupConfig, Instrument, Instruments, NamedGroup};

/// What went wrong inside an instrument.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// A parameter is out of the range the instrument accepts in its current
    /// configuration (beyond what the action's declared ranges can say).
    #[error("{0}")]
    InvalidParameter(ParamError),
    /// The instrument refused the request in its current state (for example a
    /// waveform from a channel that is switched off).
    #[error("{0}")]
    Rejected(String),
    /// The instrument answered with an error of its own.
    #[error("instrument error: {0}")]
    Instrument(String),
    /// The instrument did not answer in time.
    #[error("{0}")]
    Timeout(TimedOut),
    /// The instrument cannot be reached.
    #[error("instrument unavailable: {0}")]
    Unavailable(String),
}

/// What a client is told when an action that changes the instrument failed
/// after its commands went out: it cannot know whether they took effect.
pub const MAY_HAVE_APPLIED: &str = "the command was sent, so it may have been applied: read the instrument's state before repeating it";

/// An instrument that did not answer within `ms` milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedOut {
    pub ms: u64,
    /// A command that changes the instrument had been sent.
    pub may_have_applied: bool,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "instrument did not answer within {} ms", self.ms)?;
        if self.may_have_applied {
            write!(f, "; {MAY_HAVE_APPLIED}")?;
        }
        Ok(())
    }
}

impl DriverError {
    /// A failure of the instrument or the way to it (502, 503, 504), as
    /// opposed to a request it refused.
    pub fn is_instrument_failure(&self) -> bool {
        matches!(
            self,
            Self::Instrument(_) | Self::Timeout(_) | Self::Unavailable(_)
        )
    }
}

/// One kind of instrument connection.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name in the configuration (`sim-psu`, ...).
    fn driver_name(&self) -> &'static str;
    /// The instrument's model, as it identifies itself.
    fn model(&self) -> String;
    /// Every action this driver knows. Anything else is refused.
    fn actions(&self) -> &[ActionSpec];
    /// Runs one validated action. Called one at a time per instrument.
    async fn execute(&self, action: &ActionSpec, params: &Params) -> Result<Value, DriverError>;
    /// A snapshot of the instrument's state for the status endpoint. Must
    /// answer from what the driver already knows, never waiting on the
    /// instrument or on a command in progress.
    async fn state(&self) -> Value;
}
