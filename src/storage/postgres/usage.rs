//! The lock-usage rollups' SQL on PostgreSQL (`lock_usage`, its checkpoints
//! and cursor; migration 0003). '' stands for "all" in the instrument and
//! user columns, as on SQLite.

use super::conn::Conn;
use crate::domain::EquipmentId;
use crate::domain::Timestamp;
use crate::domain::rollup::UsageBucket;
use crate::storage::usage::{bucket, pick_value};
use crate::storage::{Pick, StoreError, UsageCursor, UsageQuery};

pub(super) fn cursor(conn: &mut Conn) -> Result<Option<UsageCursor>, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT last_seq, watermark_ms, state FROM lock_usage_cursor WHERE id = 1",
            &[],
        )?
        .map(|r| UsageCursor {
            last_seq: r.get::<_, i64>(0) as u64,
            watermark: Timestamp::from_millis(r.get(1)),
            state: r.get(2),
        }))
}

pub(super) fn advance(
    conn: &mut Conn,
    expected: Option<&UsageCursor>,
    next: &UsageCursor,
) -> Result<bool, StoreError> {
    let (seq, watermark) = (next.last_seq as i64, next.watermark.as_millis());
    // Under READ COMMITTED, a replica moving it at the same time waits for
    // the first to commit, then finds the row moved (or present) and
    // changes nothing.
    let changed = match expected {
        None => conn.execute(
            "INSERT INTO lock_usage_cursor (id, last_seq, watermark_ms, state)
             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&seq, &watermark, &next.state],
        )?,
        Some(old) => conn.execute(
            "UPDATE lock_usage_cursor SET last_seq = $1, watermark_ms = $2, state = $3
             WHERE id = 1 AND last_seq = $4 AND watermark_ms = $5",
            &[
                &seq,
                &watermark,
                &next.state,
                &(old.last_seq as i64),
                &old.watermark.as_millis(),
            ],
        )?,
    };
    Ok(changed == 1)
}

pub(super) fn put(conn: &mut Conn, buckets: &[UsageBucket]) -> Result<(), StoreError> {
    for b in buckets {
        let f = &b.figures;
        conn.execute(
            "INSERT INTO lock_usage (span_ms, equipment_id, start_ms, user_name, exclusive_ms,
                 observer_ms, busy_ms, grants, grants_from_queue, forced_releases, expiries,
                 wait_max_ms, waits, locked)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (span_ms, equipment_id, start_ms, user_name) DO UPDATE SET
                 exclusive_ms = EXCLUDED.exclusive_ms, observer_ms = EXCLUDED.observer_ms,
                 busy_ms = EXCLUDED.busy_ms, grants = EXCLUDED.grants,
                 grants_from_queue = EXCLUDED.grants_from_queue,
                 forced_releases = EXCLUDED.forced_releases, expiries = EXCLUDED.expiries,
                 wait_max_ms = EXCLUDED.wait_max_ms, waits = EXCLUDED.waits,
                 locked = EXCLUDED.locked",
            &[
                &b.span_ms,
                &b.equipment_id.as_ref().map_or("", |e| e.as_str()),
                &b.start.as_millis(),
                &b.user.as_deref().unwrap_or(""),
                &f.exclusive_ms,
                &f.observer_ms,
                &f.busy_ms,
                &(f.grants as i64),
                &(f.grants_from_queue as i64),
                &(f.forced_releases as i64),
                &(f.expiries as i64),
                &f.waits.max(),
                &f.waits.encode_bins(),
                &f.locked,
            ],
        )?;
    }
    Ok(())
}

/// The select for each pair of picks: `=` for one value or the total
/// (''), `<>` for each value.
macro_rules! select {
    ($equipment:literal, $user:literal) => {
        concat!(
            "SELECT span_ms, equipment_id, start_ms, user_name, exclusive_ms, observer_ms,
                    busy_ms, grants, grants_from_queue, forced_releases, expiries,
                    wait_max_ms, waits, locked
             FROM lock_usage
             WHERE span_ms = $1 AND start_ms >= $2 AND start_ms < $3
               AND equipment_id ",
            $equipment,
            " $4 AND user_name ",
            $user,
            " $5"
        )
    };
}

pub(super) fn buckets(conn: &mut Conn, q: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
    let sql = match (
        matches!(q.equipment, Pick::Each),
        matches!(q.user, Pick::Each),
    ) {
        (false, false) => select!("=", "="),
        (false, true) => select!("=", "<>"),
        (true, false) => select!("<>", "="),
        (true, true) => select!("<>", "<>"),
    };
    let rows = conn.query(
        sql,
        &[
            &q.span_ms,
            &q.since.as_millis(),
            &q.until.as_millis(),
            &pick_value(&q.equipment, EquipmentId::as_str),
            &pick_value(&q.user, String::as_str),
        ],
    )?;
    rows.iter()
        .map(|r| {
            bucket(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                [
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    r.get(8),
                    r.get(9),
                    r.get(10),
                ],
                r.get(11),
                r.get(12),
                r.get(13),
            )
        })
        .collect()
}

pub(super) fn put_checkpoint(
    conn: &mut Conn,
    at: Timestamp,
    state: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO lock_usage_checkpoints (at_ms, state) VALUES ($1, $2)
         ON CONFLICT (at_ms) DO UPDATE SET state = EXCLUDED.state",
        &[&at.as_millis(), &state],
    )?;
    Ok(())
}

pub(super) fn checkpoint(conn: &mut Conn, at: Timestamp) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT state FROM lock_usage_checkpoints WHERE at_ms = $1",
            &[&at.as_millis()],
        )?
        .map(|r| r.get(0)))
}
