//! An event as both SQL stores keep it in their history table: the fields
//! that filters search (kind, equipment, session, forced_by) and the time
//! in columns, the kind as a small number, and only the remaining fields in
//! a JSON `data` object. One place for the kinds' numbers and for taking an
//! event apart and putting it back together, so SQLite and PostgreSQL store
//! the same thing and a new kind cannot be added to one and not the other.

use crate::domain::{Event, EventKind, Timestamp};
use crate::storage::StoreError;

/// The kinds' numbers in the `kind` column. Stored on both SQL stores:
/// never renumber (SQLite's migration 0003 writes the same numbers, and
/// PostgreSQL's 0002 reads them from here). A `match`, so a new kind
/// cannot be added without its number.
pub(crate) fn kind_code(kind: EventKind) -> i16 {
    match kind {
        EventKind::LockAcquired => 1,
        EventKind::LockRefreshed => 2,
        EventKind::LockReleased => 3,
        EventKind::LockForceReleased => 4,
        EventKind::LockExpired => 5,
        EventKind::ObserverLockAcquired => 6,
        EventKind::ObserverLockReleased => 7,
        EventKind::ObserverRevoked => 8,
        EventKind::Queued => 9,
        EventKind::Dequeued => 10,
        EventKind::QueueProcessed => 11,
        EventKind::SessionCreated => 12,
        EventKind::SessionEnded => 13,
        EventKind::SessionExpired => 14,
        EventKind::QueueTimeout => 15,
        EventKind::MaintenanceStarted => 16,
        EventKind::MaintenanceEnded => 17,
        EventKind::ClaimExpired => 18,
        EventKind::QueueSteppedBack => 19,
        EventKind::QueueSwapped => 20,
        // Live notifications are never recorded.
        EventKind::QueuePosition
        | EventKind::LockGranted
        | EventKind::LockExpiring
        | EventKind::LockLost
        | EventKind::QueuePlaceLost => 0,
    }
}

/// The kind numbered `code` by `kind_code`.
pub(crate) fn kind_of(code: i64) -> Result<EventKind, StoreError> {
    EventKind::ALL
        .into_iter()
        .find(|k| i64::from(kind_code(*k)) == code)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown event kind number {code}")))
}

pub(crate) fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The start of an event's JSON up to its timestamp: serde writes `event`
/// and `timestamp` first (after `seq`, which a stored event leaves out).
fn json_head(kind: EventKind, at: i64) -> Result<String, StoreError> {
    Ok(format!(
        "{{\"event\":{},\"timestamp\":{}",
        serde_json::to_string(&kind).map_err(corrupt)?,
        serde_json::to_string(&Timestamp::from_millis(at)).map_err(corrupt)?
    ))
}

/// The `data` column of `event`: a JSON object of every field that has no
/// column of its own (`{}` when there is none).
pub(crate) fn compact_data(event: &Event) -> Result<String, StoreError> {
    let rest = Event {
        seq: None,
        equipment_id: None,
        session_id: None,
        forced_by: None,
        ..event.clone()
    };
    let whole = serde_json::to_string(&rest).map_err(corrupt)?;
    let head = json_head(event.event, event.timestamp.as_millis())?;
    match whole.strip_prefix(&head) {
        Some(tail) => Ok(format!("{{{}", tail.strip_prefix(',').unwrap_or(tail))),
        None => Err(StoreError::Corrupt(format!(
            "an event's JSON does not start with its kind and time: {whole}"
        ))),
    }
}

/// An event's stored columns.
pub(crate) struct StoredEvent<'a> {
    pub(crate) seq: i64,
    /// The event's own time (ms since the epoch).
    pub(crate) at: i64,
    pub(crate) kind: i64,
    pub(crate) equipment_id: Option<&'a str>,
    pub(crate) session_id: Option<&'a str>,
    pub(crate) forced_by: Option<&'a str>,
    /// `compact_data`'s object (any JSON object with those fields will do).
    pub(crate) data: &'a str,
}

impl StoredEvent<'_> {
    /// The event these columns hold.
    pub(crate) fn decode(&self) -> Result<Event, StoreError> {
        let kind = kind_of(self.kind)?;
        let mut json = json_head(kind, self.at)?;
        for (name, value) in [
            ("equipment_id", self.equipment_id),
            ("session_id", self.session_id),
            ("forced_by", self.forced_by),
        ] {
            if let Some(value) = value {
                json.push_str(&format!(
                    ",\"{name}\":{}",
                    serde_json::to_string(value).map_err(corrupt)?
                ));
            }
        }
        match self.data.trim().strip_prefix('{').map(str::trim_start) {
            Some("}") => json.push('}'),
            Some(tail) => {
                json.push(',');
                json.push_str(tail);
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "event data is not an object: {}",
                    self.data
                )));
            }
        }
        let mut event: Event = serde_json::from_str(&json).map_err(corrupt)?;
        event.seq = Some(self.seq as u64);
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EquipmentId, SessionId};

    /// Every recorded kind has its own number, and reads back as itself.
    #[test]
    fn every_recorded_kind_has_a_distinct_number() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in EventKind::ALL {
            let code = kind_code(kind);
            if code == 0 {
                continue;
            }
            assert!(seen.insert(code), "{kind:?} shares number {code}");
            assert_eq!(kind_of(i64::from(code)).unwrap(), kind);
        }
        assert!(kind_of(0).is_err() && kind_of(999).is_err());
    }

    /// Taken apart and put back together, with or without the other
    /// fields, and from `data` as PostgreSQL's `jsonb` prints it.
    #[test]
    fn an_event_reads_back_from_its_columns() {
        let mut full = Event::new(EventKind::LockForceReleased, Timestamp::from_millis(5));
        full.equipment_id = Some(EquipmentId::parse("psu").unwrap());
        full.session_id = Some(SessionId::parse("s\"1").unwrap());
        full.forced_by = Some(SessionId::parse("admin").unwrap());
        full.timeout_seconds = Some(0.1);
        full.user = Some("ü".into());
        let bare = Event::new(EventKind::SessionCreated, Timestamp::from_millis(7));
        for (seq, event) in [(3, full), (4, bare)] {
            let data = compact_data(&event).unwrap();
            assert!(!data.contains("\"event\"") && !data.contains("equipment_id"));
            let columns = |data| StoredEvent {
                seq,
                at: event.timestamp.as_millis(),
                kind: i64::from(kind_code(event.event)),
                equipment_id: event.equipment_id.as_ref().map(|e| e.as_str()),
                session_id: event.session_id.as_ref().map(|s| s.as_str()),
                forced_by: event.forced_by.as_ref().map(|s| s.as_str()),
                data,
            };
            let expected = Event {
                seq: Some(seq as u64),
                ..event.clone()
            };
            assert_eq!(columns(&data).decode().unwrap(), expected);
            let spaced = data
                .replace(':', ": ")
                .replace(',', ", ")
                .replacen('{', "{ ", 1);
            assert_eq!(columns(&spaced).decode().unwrap(), expected);
        }
    }
}
