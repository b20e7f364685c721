//! The command use case: finding the instrument, checking the action, its
//! parameters and the lock rules, then driving the instrument.

use serde_json::Value;
use std::sync::Arc;

use super::{At, CommandInput, Service, ServiceError};
use crate::domain::Access;
use crate::domain::{Actor, EquipmentId, SessionId};
use crate::drivers::{ActionSpec, DriverError, Instrument};

impl Service {
    /// Checks the lock rules for a command and renews what authorised it.
    async fn authorize(
        &self,
        actor: &Actor,
        equipment: &EquipmentId,
        session: Option<&SessionId>,
        access: crate::domain::Access,
        fencing_token: Option<u64>,
    ) -> Result<(), ServiceError> {
        let locks_enabled = self.policy.locks_enabled;
        let implicit_sessions = self.policy.implicit_sessions;
        let (actor, equipment, session) = (actor.clone(), equipment.clone(), session.cloned());
        self.run(move |uow| {
            let (actor, equipment, session) = (&actor, &equipment, session.as_ref());
            uow.acting(actor);
            let live = match session {
                Some(id) => uow.renew_if_live(id, actor)?,
                None => None,
            };
            let mut locks = uow.load_locks(equipment)?;
            let check = crate::domain::lock::CommandCheck {
                session,
                session_live: live.is_some(),
                access,
                fencing_token,
                locks_enabled,
                implicit_sessions,
            };
            locks.authorize_command(&check, actor, uow.now)?;
            if locks_enabled {
                // The grant that allowed it was renewed.
                uow.save_locks(&locks)?;
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    pub fn instrument(&self, id: &EquipmentId) -> Result<&Arc<Instrument>, ServiceError> {
        self.instruments.get(id).ok_or_else(|| self.not_found(id))
    }

    pub(super) fn registered(&self, id: &EquipmentId) -> Result<(), ServiceError> {
        if self.instruments.contains(id) {
            Ok(())
        } else {
            Err(self.not_found(id))
        }
    }

    /// What to tell a request naming `id`, which is no instrument: a
    /// configured lock group's id says what it is and what it holds.
    fn not_found(&self, id: &EquipmentId) -> ServiceError {
        match self.instruments.group(id) {
            Some(group) => ServiceError::GroupIsNoInstrument {
                group: id.clone(),
                members: group.members.clone(),
            },
            None => ServiceError::EquipmentNotFound(id.clone()),
        }
    }

    /// Runs one command: known action, valid parameters, lock rules, then
    /// the instrument, one command at a time per instrument. Measured by
    /// instrument, action class and outcome (a command for an instrument
    /// that is not configured is not: its id would be any text sent).
    pub async fn run_command(&self, input: CommandInput) -> Result<At<Value>, ServiceError> {
        let instrument = self.instrument(&input.equipment_id)?;
        let started = std::time::Instant::now();
        let class = instrument
            .driver
            .actions()
            .iter()
            .find(|a| a.name == input.action)
            .map_or("unknown", |a| access_class(a.access));
        let result = self.drive(instrument, input).await;
        crate::measure::command(
            instrument.id.as_str(),
            class,
            command_outcome(&result),
            started.elapsed(),
        );
        result
    }

    async fn drive(
        &self,
        instrument: &Arc<Instrument>,
        input: CommandInput,
    ) -> Result<At<Value>, ServiceError> {
        let action: &ActionSpec = instrument
            .driver
            .actions()
            .iter()
            .find(|a| a.name == input.action)
            .ok_or_else(|| ServiceError::UnknownAction {
                equipment: input.equipment_id.clone(),
                action: input.action.clone(),
                valid: instrument
                    .driver
                    .actions()
                    .iter()
                    .map(|a| a.name.clone())
                    .collect(),
            })?;
        let params = action.validate(&input.parameters)?;
        input.actor.may_run(action.access)?;
        let _turn = instrument.serial.lock().await;
        self.authorize(
            &input.actor,
            &input.equipment_id,
            input.session_id.as_ref(),
            action.access,
            input.fencing_token,
        )
        .await?;
        let value = instrument
            .driver
            .execute(action, &params)
            .await
            .inspect_err(|e| {
                // Answered as 502/503/504 without a cause on our side: say
                // which instrument, for whom and for which command.
                if e.is_instrument_failure() {
                    tracing::warn!(
                        equipment = %input.equipment_id,
                        session = input.session_id.as_ref().map(|s| s.as_str()).unwrap_or("-"),
                        command_id = input.command_id.as_deref().unwrap_or("-"),
                        action = %action.name,
                        error = %e,
                        "instrument command failed"
                    );
                }
            })?;
        Ok(At {
            value,
            now: self.clock.now(),
        })
    }
}

/// An action's class as a metric label.
fn access_class(access: Access) -> &'static str {
    match access {
        Access::Control => "control",
        Access::Observe => "observe",
    }
}

/// A command's outcome as a metric label: a few classes, never the detail.
fn command_outcome<T>(result: &Result<T, ServiceError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(
            ServiceError::UnknownAction { .. }
            | ServiceError::InvalidParameter(_)
            | ServiceError::Invalid(_)
            | ServiceError::EquipmentNotFound(_)
            | ServiceError::NoSuchPool(_)
            | ServiceError::NoSuchGroup(_)
            | ServiceError::GroupIsNoInstrument { .. }
            | ServiceError::Driver(DriverError::InvalidParameter(_)),
        ) => "invalid",
        Err(ServiceError::Domain(_)) => "refused",
        Err(ServiceError::Driver(DriverError::Rejected(_))) => "rejected",
        Err(ServiceError::Driver(DriverError::Instrument(_))) => "instrument_error",
        Err(ServiceError::Driver(DriverError::Timeout(_))) => "timeout",
        Err(ServiceError::Driver(DriverError::Unavailable(_))) => "unavailable",
        Err(ServiceError::Store(_)) => "store_unavailable",
    }
}
