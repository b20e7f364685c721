//! The service's one error type: what a use case can fail with, from the
//! domain, the store, the instruments, or the request itself. Mapped to
//! HTTP once, in `api::error`.

use crate::domain::{DomainError, EquipmentId};
use crate::drivers::{DriverError, ParamError};
use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("equipment {0} is not registered; GET /api/equipment/list shows what is")]
    EquipmentNotFound(EquipmentId),
    /// A configured lock group's id where only an instrument will do.
    #[error("{group} is a lock group, not an instrument: acquire, release, maintenance and analytics take its id; for the rest name a member ({})", members.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "))]
    GroupIsNoInstrument {
        group: EquipmentId,
        members: Vec<EquipmentId>,
    },
    /// A lock group release that names no group the session holds or
    /// waits for.
    #[error("{0}")]
    NoSuchGroup(String),
    /// A pool (`any_of`) that names no instrument the caller could get.
    #[error("{0}")]
    NoSuchPool(String),
    #[error("unknown action {} for {equipment}; valid actions: {}", serde_json::Value::from(action.as_str()), valid.join(", "))]
    UnknownAction {
        equipment: EquipmentId,
        action: String,
        valid: Vec<String>,
    },
    #[error(transparent)]
    InvalidParameter(#[from] ParamError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Invalid(String),
}
