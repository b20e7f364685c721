//! The session use cases: open, end, renew, look up, list, and what a
//! session holds or did.

use super::inputs::too_many;
use super::{At, NewSession, Service, ServiceError, SessionEnd, SessionHoldings, SessionPage};
use crate::domain::DomainError;
use crate::domain::{Actor, EndReason, Event, EventKind, Session, SessionId};

impl Service {
    pub async fn create_session(&self, new: NewSession) -> Result<At<Session>, ServiceError> {
        let id = SessionId::parse(&uuid::Uuid::new_v4().to_string())?;
        let timeout = new.timeout.unwrap_or(self.policy.default_session_timeout);
        Session::check_metadata(&new.metadata, self.policy.max_metadata_bytes)?;
        self.run(move |uow| {
            let session = Session {
                id: id.clone(),
                client_name: new
                    .client_name
                    .clone()
                    .unwrap_or_else(|| "unnamed client".into()),
                client_ip: new.client_ip.clone(),
                created_at: uow.now,
                last_activity: uow.now,
                timeout,
                metadata: new.metadata.clone(),
                user: new.actor.user.clone(),
            };
            uow.acting(&new.actor);
            uow.save_session(&session)?;
            let mut e = Event::new(EventKind::SessionCreated, uow.now);
            e.session_id = Some(id.clone());
            e.timeout_seconds = Some(timeout.as_seconds());
            uow.events.push(e);
            Ok(session)
        })
        .await
    }

    pub async fn end_session(
        &self,
        id: &SessionId,
        actor: &Actor,
    ) -> Result<At<SessionEnd>, ServiceError> {
        let (id, actor) = (id.clone(), actor.clone());
        self.run(move |uow| {
            let (id, actor) = (&id, &actor);
            uow.acting(actor);
            let session = uow
                .live_session(id)?
                .ok_or_else(|| DomainError::SessionNotFound(id.clone()))?;
            actor.may_use(&session)?;
            let locks_released = uow.end_session(&session, EndReason::SessionEnded)?;
            Ok(SessionEnd { locks_released })
        })
        .await
    }

    pub async fn session(&self, id: &SessionId) -> Result<At<Session>, ServiceError> {
        let id = id.clone();
        self.read(move |view| {
            view.live_session(&id)?
                .ok_or_else(|| DomainError::SessionNotFound(id.clone()).into())
        })
        .await
    }

    /// Live sessions, `limit` at a time, in session id order, after
    /// `cursor` (the previous page's last id).
    pub async fn sessions(
        &self,
        cursor: Option<&SessionId>,
        limit: usize,
    ) -> Result<At<SessionPage>, ServiceError> {
        let limit = too_many(limit)?;
        let cursor = cursor.cloned();
        self.read(move |view| {
            let mut sessions = view.tx.sessions_page(cursor.as_ref(), limit)?;
            // The page is full when the store had `limit` more: only then
            // may another follow (a page shortened by the liveness filter
            // still points past what it skipped).
            let next_cursor = (sessions.len() == limit)
                .then(|| sessions.last().map(|s| s.id.clone()))
                .flatten();
            sessions.retain(|s| s.is_live(view.now));
            Ok(SessionPage {
                sessions,
                next_cursor,
            })
        })
        .await
    }

    pub async fn touch_session(
        &self,
        id: &SessionId,
        actor: &Actor,
    ) -> Result<At<Session>, ServiceError> {
        let (id, actor) = (id.clone(), actor.clone());
        self.run(move |uow| uow.renew_session(&id, &actor)).await
    }

    pub async fn session_holdings(
        &self,
        id: &SessionId,
    ) -> Result<At<SessionHoldings>, ServiceError> {
        let id = id.clone();
        self.read(move |view| {
            let id = &id;
            view.live_session(id)?
                .ok_or_else(|| DomainError::SessionNotFound(id.clone()))?;
            let mut holdings = SessionHoldings {
                locks: Vec::new(),
                queued: Vec::new(),
            };
            for equipment in view.tx.equipment_of_session(id)? {
                let locks = view.locks(&equipment)?;
                if let Some(grant) = locks.grant_of(id) {
                    holdings.locks.push((equipment.clone(), grant.clone()));
                }
                if let Some(position) = locks.position_of(id) {
                    let entry = locks.queue[position - 1].clone();
                    holdings.queued.push((equipment, entry, position));
                }
            }
            Ok(holdings)
        })
        .await
    }

    pub async fn session_events(
        &self,
        id: &SessionId,
        limit: usize,
    ) -> Result<At<Vec<Event>>, ServiceError> {
        let limit = too_many(limit)?;
        let id = id.clone();
        self.read_events(move |tx| {
            let events = tx.session_events(&id, limit)?;
            if events.is_empty() && tx.session(&id)?.is_none() {
                return Err(DomainError::SessionNotFound(id.clone()).into());
            }
            Ok(events)
        })
        .await
    }
}
