//! Rollup rows as both SQL backends store them: '' stands for "all" in
//! the instrument and user columns, the waits are `encode_bins` text.

use crate::domain::rollup::{Figures, UsageBucket, WaitHistogram};
use crate::domain::{EquipmentId, Timestamp};
use crate::storage::{Pick, StoreError};

/// What a pick's parameter is bound to ('' for all).
pub(crate) fn pick_value<'a, T>(pick: &'a Pick<T>, as_str: impl Fn(&'a T) -> &'a str) -> &'a str {
    match pick {
        Pick::One(value) => as_str(value),
        Pick::Total | Pick::Each => "",
    }
}

/// A bucket from its stored parts (shared with PostgreSQL).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bucket(
    span_ms: i64,
    equipment: &str,
    start: i64,
    user: String,
    n: [i64; 7],
    wait_max: Option<i64>,
    waits: &str,
    locked: bool,
) -> Result<UsageBucket, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("lock_usage row: {what}"));
    let waits = WaitHistogram::decode(waits, wait_max).ok_or_else(|| bad("waits"))?;
    Ok(UsageBucket {
        span_ms,
        start: Timestamp::from_millis(start),
        equipment_id: if equipment.is_empty() {
            None
        } else {
            Some(EquipmentId::parse(equipment).map_err(|_| bad("equipment_id"))?)
        },
        user: (!user.is_empty()).then_some(user),
        figures: Figures {
            exclusive_ms: n[0],
            observer_ms: n[1],
            busy_ms: n[2],
            grants: n[3] as u64,
            grants_from_queue: n[4] as u64,
            forced_releases: n[5] as u64,
            expiries: n[6] as u64,
            waits,
            locked,
        },
    })
}
