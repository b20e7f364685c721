//! Start-up: renewing what lapsed while the server was down.

use super::{Service, ServiceError};
use crate::storage::Due;

impl Service {
    /// At start-up: every session and lock whose deadline passed while the
    /// server was down gets one fresh period from now (semantics.md,
    /// "Restart"). Run before serving, without expiring anything first.
    /// Like `expire_due`, a bounded batch per transaction, however much
    /// lapsed; a batch that changes nothing (a store whose deadline index
    /// disagrees with its rows) ends it.
    pub async fn recover_after_restart(&self) -> Result<usize, ServiceError> {
        const BATCH: usize = 256;
        let start = self.clock.now();
        let mut renewed = 0;
        let mut last_round = Vec::new();
        loop {
            let round = self
                .store
                .write(move |tx| {
                    let round = tx.due(start, BATCH)?;
                    for item in round.iter().cloned() {
                        match item {
                            Due::Session(id) => match tx.session(&id)? {
                                Some(mut session) => {
                                    session.renew_after_restart(start);
                                    tx.save_session(&session)?;
                                }
                                None => tx.delete_session(&id)?,
                            },
                            Due::Equipment(id) => {
                                let mut locks = tx.equipment_locks(&id)?;
                                locks.renew_after_restart(start);
                                tx.save_equipment_locks(&locks)?;
                            }
                        }
                    }
                    Ok(round)
                })
                .await?;
            if round.is_empty() {
                return Ok(renewed);
            }
            if round == last_round {
                tracing::warn!(
                    left = round.len(),
                    "renewing after the restart made no progress; the reaper will expire the rest"
                );
                return Ok(renewed);
            }
            renewed += round.len();
            last_round = round;
        }
    }
}
