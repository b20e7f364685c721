//! The lock-usage rollups' SQL on SQLite (`lock_usage`, its checkpoints and
//! cursor; migration 0004). '' stands for "all" in the instrument and user
//! columns.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::unavailable;
use crate::domain::rollup::UsageBucket;
use crate::domain::{EquipmentId, Timestamp};
use crate::storage::usage::{bucket, pick_value};
use crate::storage::{Pick, StoreError, UsageCursor, UsageQuery};

const COLUMNS: &str = "span_ms, equipment_id, start_ms, user_name, exclusive_ms, observer_ms, \
    busy_ms, grants, grants_from_queue, forced_releases, expiries, wait_max_ms, waits, locked";

pub(super) fn cursor(conn: &Connection) -> Result<Option<UsageCursor>, StoreError> {
    conn.prepare_cached("SELECT last_seq, watermark_ms, state FROM lock_usage_cursor WHERE id = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(UsageCursor {
                    last_seq: r.get::<_, i64>(0)? as u64,
                    watermark: Timestamp::from_millis(r.get(1)?),
                    state: r.get(2)?,
                })
            })
            .optional()
        })
        .map_err(unavailable)
}

pub(super) fn advance(
    conn: &Connection,
    expected: Option<&UsageCursor>,
    next: &UsageCursor,
) -> Result<bool, StoreError> {
    let values = params![next.last_seq as i64, next.watermark.as_millis(), next.state];
    let changed = match expected {
        None => conn
            .prepare_cached(
                "INSERT INTO lock_usage_cursor (id, last_seq, watermark_ms, state)
                 VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(values)),
        Some(old) => conn
            .prepare_cached(
                "UPDATE lock_usage_cursor SET last_seq = ?1, watermark_ms = ?2, state = ?3
                 WHERE id = 1 AND last_seq = ?4 AND watermark_ms = ?5",
            )
            .and_then(|mut s| {
                s.execute(params![
                    next.last_seq as i64,
                    next.watermark.as_millis(),
                    next.state,
                    old.last_seq as i64,
                    old.watermark.as_millis()
                ])
            }),
    }
    .map_err(unavailable)?;
    Ok(changed == 1)
}

pub(super) fn put(conn: &Connection, buckets: &[UsageBucket]) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO lock_usage ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))
        .map_err(unavailable)?;
    for b in buckets {
        let f = &b.figures;
        insert
            .execute(params![
                b.span_ms,
                b.equipment_id.as_ref().map_or("", |e| e.as_str()),
                b.start.as_millis(),
                b.user.as_deref().unwrap_or(""),
                f.exclusive_ms,
                f.observer_ms,
                f.busy_ms,
                f.grants as i64,
                f.grants_from_queue as i64,
                f.forced_releases as i64,
                f.expiries as i64,
                f.waits.max(),
                f.waits.encode_bins(),
                f.locked,
            ])
            .map_err(unavailable)?;
    }
    Ok(())
}

/// The condition on a key column for a pick, always naming parameter
/// `?n` (bound to `pick_value`).
fn pick_sql<T>(column: &str, pick: &Pick<T>, n: &str) -> String {
    match pick {
        Pick::Each => format!("{column} <> {n}"),
        Pick::Total | Pick::One(_) => format!("{column} = {n}"),
    }
}

pub(super) fn buckets(conn: &Connection, q: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM lock_usage
         WHERE span_ms = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND {} AND {}",
        pick_sql("equipment_id", &q.equipment, "?4"),
        pick_sql("user_name", &q.user, "?5"),
    );
    let mut statement = conn.prepare_cached(&sql).map_err(unavailable)?;
    let rows = statement
        .query_map(
            params![
                q.span_ms,
                q.since.as_millis(),
                q.until.as_millis(),
                pick_value(&q.equipment, EquipmentId::as_str),
                pick_value(&q.user, String::as_str)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    [
                        r.get::<_, i64>(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                    ],
                    r.get::<_, Option<i64>>(11)?,
                    r.get::<_, String>(12)?,
                    r.get::<_, bool>(13)?,
                ))
            },
        )
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (span_ms, equipment, start, user, n, max, waits, locked) = row.map_err(unavailable)?;
        out.push(bucket(
            span_ms, &equipment, start, user, n, max, &waits, locked,
        )?);
    }
    Ok(out)
}

pub(super) fn put_checkpoint(
    conn: &Connection,
    at: Timestamp,
    state: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO lock_usage_checkpoints (at_ms, state) VALUES (?1, ?2)",
    )
    .and_then(|mut s| s.execute(params![at.as_millis(), state]))
    .map_err(unavailable)?;
    Ok(())
}

pub(super) fn checkpoint(conn: &Connection, at: Timestamp) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT state FROM lock_usage_checkpoints WHERE at_ms = ?1")
        .and_then(|mut s| s.query_row([at.as_millis()], |r| r.get(0)).optional())
        .map_err(unavailable)
}
