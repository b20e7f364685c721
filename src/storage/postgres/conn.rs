//! One connection to PostgreSQL: connecting with the store's settings, the
//! statements it has prepared (each prepared once per connection, as
//! SQLite's statement cache does), and PostgreSQL's failures turned into
//! `StoreError`s an operator can act on. It decides nothing.

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use std::collections::HashMap;

use super::PostgresOptions;
use crate::storage::StoreError;

pub(super) struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
    /// When the connection last did something.
    used: std::time::Instant,
}

/// A connection idle longer than this is checked before use: a PostgreSQL
/// restart meanwhile leaves it broken without anyone noticing until then.
const CHECK_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

impl Conn {
    pub(super) fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let client = options.config.connect(NoTls).map_err(unavailable)?;
        Ok(Self {
            client,
            prepared: HashMap::new(),
            used: std::time::Instant::now(),
        })
    }

    /// Whether the connection can be used: not closed, and if it sat idle
    /// for a while, it answers (a round trip; never on a busy connection).
    pub(super) fn usable(&mut self) -> bool {
        if self.client.is_closed() {
            return false;
        }
        if self.used.elapsed() < CHECK_AFTER_IDLE {
            return true;
        }
        self.used = std::time::Instant::now();
        self.client
            .is_valid(std::time::Duration::from_secs(2))
            .is_ok()
    }

    /// Whether the connection is gone (PostgreSQL restarted, the network
    /// dropped): it must be opened again.
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        self.used = std::time::Instant::now();
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(unavailable)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params).map_err(unavailable)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query_opt(&statement, params)
            .map_err(unavailable)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query_one(&statement, params)
            .map_err(unavailable)
    }

    pub(super) fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params).map_err(unavailable)
    }

    /// Runs `sql` unprepared, in one round trip: PostgreSQL plans it for
    /// these very values (a prepared statement soon gets one generic plan
    /// for all values, which picks the wrong index when how many rows match
    /// depends on the value: a rare kind on the busiest instrument).
    pub(super) fn query_planned_for(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), postgres::types::Type)],
    ) -> Result<Vec<Row>, StoreError> {
        self.used = std::time::Instant::now();
        self.client.query_typed(sql, params).map_err(unavailable)
    }

    /// Runs statements without parameters, in one round trip.
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.used = std::time::Instant::now();
        self.client.batch_execute(sql).map_err(unavailable)
    }

    /// Runs statements without parameters in one round trip; returns the
    /// rows of two-column results as text (`key`, `value`).
    pub(super) fn simple(&mut self, sql: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.used = std::time::Instant::now();
        let messages = self.client.simple_query(sql).map_err(unavailable)?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0).unwrap_or_default().to_string(),
                    row.get(1).unwrap_or_default().to_string(),
                )),
                _ => None,
            })
            .collect())
    }

    pub(super) fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Turns a PostgreSQL failure into what an operator can act on.
pub(super) fn unavailable(e: postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(format!("the connection to PostgreSQL is closed ({e})"));
    }
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!(
            "PostgreSQL refused: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Unavailable(format!("cannot reach PostgreSQL ({e})")),
    }
}

pub(super) use crate::storage::event_row::corrupt;
