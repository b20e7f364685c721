//! Searching the history: every combination of filters answers from the
//! indexes in time proportional to the page, not to the history.
//!
//! One SQL statement with optional filters lets SQLite use one index at
//! best, and a rare filter then scans (a kind that is 0.1% of the events
//! read 10 million rows for a page). Instead, each filter is a stream of
//! `seq`s in order, read from its own index (`equipment_id`, `session_id`
//! with `forced_by`, `kind`); the streams are intersected by leapfrogging
//! (each jumps to the first `seq` at or after the largest any other is
//! at), so a rare filter skips the other streams forward in one seek. The
//! time filters become a `seq` range: `t` never decreases with `seq`, so
//! the range's ends are found by bisecting the table, and each candidate's
//! own time is checked exactly.

use rusqlite::{Connection, OptionalExtension};

use super::rows::{EVENT_COLUMNS, kind_code, read_event, unavailable};
use super::tx::SqliteTx;
use crate::domain::Event;
use crate::storage::{EventQuery, StoreError};

/// How many `seq`s a source reads at a time from its index: few after a
/// jump (a dense source seeking past a rare one's next match would read
/// many it never uses), more while it is read in order.
const FIRST_CHUNK: i64 = 8;
const MAX_CHUNK: i64 = 256;

pub(super) fn query_events(
    tx: &mut SqliteTx<'_>,
    query: &EventQuery,
) -> Result<Vec<Event>, StoreError> {
    let conn = tx.tx;
    let Some((first, last)) = bounds(conn)? else {
        return Ok(Vec::new());
    };
    // No `seq` exceeds i64::MAX: a larger cursor is past them all.
    let after = i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX);
    let mut from = after.saturating_add(1).max(first);
    let mut to = last.saturating_add(1);
    if let Some(since) = query.since {
        // An event at or after `since` has `t` at or after it too.
        from = from.max(first_reaching(conn, since.as_millis(), first, last)?);
    }
    if let Some(until) = query.until {
        // An event before `until` has `t` below `until` plus the largest lag.
        let lag: i64 = conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'event_time_lag'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(unavailable)?;
        let bound = until.as_millis().saturating_add(lag);
        to = to.min(first_reaching(conn, bound, first, last)?);
    }
    let mut streams = Vec::new();
    if let Some(id) = &query.equipment_id {
        streams.push(Stream::new(vec![Source::new(
            Index::Equipment,
            id.to_string(),
        )]));
    }
    if let Some(id) = &query.session_id {
        streams.push(Stream::new(vec![
            Source::new(Index::Session, id.to_string()),
            Source::new(Index::ForcedBy, id.to_string()),
        ]));
    }
    if let Some(kind) = query.kind {
        streams.push(Stream::new(vec![Source::new(Index::Kind, kind_code(kind))]));
    }
    if streams.is_empty() {
        streams.push(Stream::new(vec![Source::new(Index::All, 0)]));
    }
    let mut found = Vec::new();
    let mut x = from;
    'search: while x < to && found.len() < query.limit {
        for i in 0..streams.len() {
            match streams[i].seek(conn, x, to)? {
                None => break 'search,
                Some(y) if y > x => {
                    x = y;
                    // The stream that jumped is the sparse one: it goes
                    // first next round, so the dense ones seek only to
                    // its candidates.
                    streams[..=i].rotate_right(1);
                    continue 'search;
                }
                Some(_) => {}
            }
        }
        // Every stream holds `x`: it passes every filter but the time.
        let event = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
            ))
            .map_err(unavailable)?
            .query_row([x], |r| Ok(read_event(r)))
            .optional()
            .map_err(unavailable)?
            .transpose()?;
        if let Some(event) = event.filter(|e| query.matches(e)) {
            found.push(event);
        }
        x += 1;
    }
    Ok(found)
}

/// The first and last `seq` recorded, if any.
fn bounds(conn: &Connection) -> Result<Option<(i64, i64)>, StoreError> {
    // Two subqueries: SQLite answers a lone MIN or MAX from the end of
    // the table, but scans it for both in one SELECT.
    conn.prepare_cached("SELECT (SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events)")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
            })
        })
        .map_err(unavailable)
}

/// The first `seq` whose `t` is at or after `at` (`last + 1` if none), by
/// bisection over `seq` (numbers may have gaps: each probe reads the first
/// event at or after it).
fn first_reaching(conn: &Connection, at: i64, first: i64, last: i64) -> Result<i64, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, t FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1")
        .map_err(unavailable)?;
    let mut probe = |s: i64| -> Result<Option<(i64, i64)>, StoreError> {
        stmt.query_row([s], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(unavailable)
    };
    // Whether the first event at or after `s` reaches `at` (or there is
    // none): false, then true from some `s` on, since `t` never decreases.
    let mut reaches = |s: i64| Ok::<_, StoreError>(probe(s)?.is_none_or(|(_, t)| t >= at));
    let (mut lo, mut hi) = (first, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if reaches(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(probe(lo)?.map_or(last + 1, |(seq, _)| seq))
}

/// An index that lists `seq`s in order for one key.
#[derive(Clone, Copy)]
enum Index {
    Equipment,
    Session,
    ForcedBy,
    Kind,
    /// The table itself: every event.
    All,
}

impl Index {
    fn sql(self) -> &'static str {
        match self {
            Self::Equipment => {
                "SELECT seq FROM events WHERE equipment_id = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4"
            }
            Self::Session => {
                "SELECT seq FROM events WHERE session_id = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4"
            }
            Self::ForcedBy => {
                "SELECT seq FROM events WHERE forced_by = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4"
            }
            Self::Kind => {
                "SELECT seq FROM events WHERE kind = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4"
            }
            Self::All => {
                "SELECT seq FROM events WHERE ?1 IS NOT NULL AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4"
            }
        }
    }
}

/// One index's `seq`s for one key, read a chunk at a time.
struct Source {
    index: Index,
    key: rusqlite::types::Value,
    /// `seq`s read, in order, covering [`start`, `covered`): every `seq`
    /// of this key in that range is in `buffer`.
    buffer: Vec<i64>,
    start: i64,
    covered: i64,
    /// How many to read next time.
    chunk: i64,
}

impl Source {
    fn new(index: Index, key: impl Into<rusqlite::types::Value>) -> Self {
        Self {
            index,
            key: key.into(),
            buffer: Vec::new(),
            start: 0,
            covered: 0,
            chunk: FIRST_CHUNK,
        }
    }

    /// The first `seq` of this key at or after `x` and before `to`.
    fn seek(&mut self, conn: &Connection, x: i64, to: i64) -> Result<Option<i64>, StoreError> {
        if !(self.start <= x && x < self.covered) {
            // Read on from where the last chunk ended: in order, read more.
            self.chunk = if x == self.covered {
                (self.chunk * 4).min(MAX_CHUNK)
            } else {
                FIRST_CHUNK
            };
            let mut stmt = conn.prepare_cached(self.index.sql()).map_err(unavailable)?;
            let rows = stmt
                .query_map(rusqlite::params![self.key, x, to, self.chunk], |r| r.get(0))
                .map_err(unavailable)?;
            self.buffer = rows.collect::<Result<_, _>>().map_err(unavailable)?;
            self.start = x;
            self.covered = match self.buffer.last() {
                Some(&last) if self.buffer.len() as i64 == self.chunk => last + 1,
                _ => to,
            };
        }
        let at = self.buffer.partition_point(|&s| s < x);
        Ok(self.buffer.get(at).copied().filter(|&s| s < to))
    }
}

/// The `seq`s that pass one filter: the union of its sources.
struct Stream(Vec<Source>);

impl Stream {
    fn new(sources: Vec<Source>) -> Self {
        Self(sources)
    }

    fn seek(&mut self, conn: &Connection, x: i64, to: i64) -> Result<Option<i64>, StoreError> {
        let mut first = None;
        for source in &mut self.0 {
            if let Some(s) = source.seek(conn, x, to)? {
                first = Some(first.map_or(s, |f: i64| f.min(s)));
            }
        }
        Ok(first)
    }
}
