//! Who may do what, once authentication is on: the roles, the caller of a
//! request (`Actor`), and each rule as a pure check. With authentication
//! off every caller is `Actor::anyone()` and every check passes, as the
//! brief's API has always behaved.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::DomainError;
use super::lock::{Access, LockMode};
use super::session::Session;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including force-releasing others' locks.
    Admin,
    /// Exclusive and observer locks on the equipment they are allowed to use.
    Operator,
    /// Observer locks and observe actions only.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Observer => "observer",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Admin, Self::Operator, Self::Observer]
            .into_iter()
            .find(|r| r.as_str() == raw)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The highest acquire priority each role may ask for, once
/// authentication is on (admins: the highest there is). Asking below 0,
/// to let others go first, is open to everyone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriorityCaps {
    pub operator: i8,
    pub observer: i8,
}

/// The lab manager's controls, each named as a refusal says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerAction {
    ForceRelease,
    StartMaintenance,
    EndMaintenance,
    RemoveWaiter,
    EndSession,
}

impl fmt::Display for ManagerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ForceRelease => "force a release",
            Self::StartMaintenance => "start maintenance",
            Self::EndMaintenance => "end maintenance",
            Self::RemoveWaiter => "remove a waiter from a queue",
            Self::EndSession => "force-end a session",
        })
    }
}

/// The caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `None` when authentication is off.
    pub user: Option<String>,
    pub role: Role,
}

impl Actor {
    /// The caller when authentication is off: may do anything.
    pub fn anyone() -> Self {
        Self {
            user: None,
            role: Role::Admin,
        }
    }

    pub fn user(user: &str, role: Role) -> Self {
        Self {
            user: Some(user.to_owned()),
            role,
        }
    }

    pub fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("anyone")
    }

    /// A session belongs to the user who created it: knowing its id grants
    /// nothing to anybody else.
    pub fn may_use(&self, session: &Session) -> Result<(), DomainError> {
        if self.authenticated() && session.user != self.user {
            return Err(DomainError::Forbidden(format!(
                "session {} belongs to another user; {} may act only with their own sessions",
                session.id,
                self.name()
            )));
        }
        Ok(())
    }

    /// Whether the actor may open session `id` implicitly (or re-open it),
    /// given the users known to have used that id before: its locks, queue
    /// places and history. An id someone else used stays theirs, so knowing
    /// it (it shows in every status) grants nothing.
    pub fn may_claim<'a>(
        &self,
        id: &super::SessionId,
        former_users: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Result<(), DomainError> {
        if !self.authenticated() {
            return Ok(());
        }
        if former_users
            .into_iter()
            .any(|user| user != self.user.as_deref())
        {
            return Err(DomainError::Forbidden(format!(
                "session {id} belongs to another user; {} may act only with their own sessions",
                self.name()
            )));
        }
        Ok(())
    }

    /// Forcing a release is for administrators.
    pub fn may_force(&self) -> Result<(), DomainError> {
        self.may_manage(ManagerAction::ForceRelease)
    }

    /// The lab manager's controls are for administrators; a refusal names
    /// the action refused.
    pub fn may_manage(&self, action: ManagerAction) -> Result<(), DomainError> {
        if self.role != Role::Admin {
            return Err(DomainError::Forbidden(format!(
                "only an admin may {action}; {} is {}",
                self.name(),
                self.role
            )));
        }
        Ok(())
    }

    /// A priority above 0 needs a role allowed it (`caps`); admins, and
    /// every caller with authentication off, may use the highest.
    pub fn may_use_priority(&self, priority: i8, caps: PriorityCaps) -> Result<(), DomainError> {
        let cap = match self.role {
            Role::Admin => super::priority::MAX_PRIORITY,
            Role::Operator => caps.operator,
            Role::Observer => caps.observer,
        };
        if priority > 0 && priority > cap {
            return Err(DomainError::Forbidden(format!(
                "{} is {} and may ask for a priority of at most {cap}, not {priority}",
                self.name(),
                self.role
            )));
        }
        Ok(())
    }

    /// The observer role may take only observer locks.
    pub fn may_lock(&self, mode: LockMode) -> Result<(), DomainError> {
        if self.role == Role::Observer && mode == LockMode::Exclusive {
            return Err(DomainError::Forbidden(format!(
                "{} has the observer role: only observer locks are allowed",
                self.name()
            )));
        }
        Ok(())
    }

    /// The observer role may run only observe actions.
    pub fn may_run(&self, access: Access) -> Result<(), DomainError> {
        if self.role == Role::Observer && access == Access::Control {
            return Err(DomainError::Forbidden(format!(
                "{} has the observer role: only observe actions are allowed",
                self.name()
            )));
        }
        Ok(())
    }

    /// An equipment's allow list (`["alice", "role:operator"]`) limits who
    /// may lock it at all; admins always may. No list: everyone may.
    pub fn may_use_equipment(
        &self,
        equipment: &str,
        allow: Option<&[String]>,
    ) -> Result<(), DomainError> {
        let Some(allow) = allow else { return Ok(()) };
        if !self.authenticated() || self.role == Role::Admin {
            return Ok(());
        }
        let permitted = allow.iter().any(|entry| match entry.strip_prefix("role:") {
            Some(role) => role == self.role.as_str(),
            None => Some(entry.as_str()) == self.user.as_deref(),
        });
        if !permitted {
            return Err(DomainError::Forbidden(format!(
                "{} is not on the allow list of {equipment} ({})",
                self.name(),
                allow.join(", ")
            )));
        }
        Ok(())
    }
}

/// Whether `user` is a valid user name: 1 to 64 letters, digits, '.', '_',
/// '-' or '@' (the names tokens are made for).
pub fn valid_user_name(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
}

/// Checks an equipment's allow list: each entry is a user name or
/// `role:<role>`. An entry that can never match anyone (an unknown role, a
/// name no token can have) is a mistake to stop on, not to ignore.
pub fn check_allow_list(allow: &[String]) -> Result<(), String> {
    for entry in allow {
        match entry.strip_prefix("role:") {
            Some(role) if Role::parse(role).is_none() => {
                return Err(format!(
                    "allow entry {entry:?} names no role (roles: admin, operator, observer)"
                ));
            }
            Some(_) => {}
            None if !valid_user_name(entry) => {
                return Err(format!(
                    "allow entry {entry:?} is neither a user name (1 to 64 letters, digits, '.', '_', '-' or '@') nor role:<role>"
                ));
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SessionId, Timeout, Timestamp};

    fn session(user: Option<&str>) -> Session {
        Session {
            id: SessionId::parse("s").unwrap(),
            client_name: "pc".into(),
            client_ip: None,
            created_at: Timestamp::from_millis(0),
            last_activity: Timestamp::from_millis(0),
            timeout: Timeout::NONE,
            metadata: Default::default(),
            user: user.map(String::from),
        }
    }

    #[test]
    fn rules_table() {
        let alice = Actor::user("alice", Role::Operator);
        let viewer = Actor::user("vera", Role::Observer);
        let admin = Actor::user("root", Role::Admin);
        let anyone = Actor::anyone();
        assert!(alice.may_use(&session(Some("alice"))).is_ok());
        assert!(alice.may_use(&session(Some("bob"))).is_err());
        assert!(
            admin.may_use(&session(Some("bob"))).is_err(),
            "admins act with their own sessions too"
        );
        assert!(anyone.may_use(&session(Some("bob"))).is_ok());
        assert!(anyone.may_use(&session(None)).is_ok());
        assert!(
            alice.may_force().is_err() && admin.may_force().is_ok() && anyone.may_force().is_ok()
        );
        for (action, says) in [
            (ManagerAction::ForceRelease, "force a release"),
            (ManagerAction::StartMaintenance, "start maintenance"),
            (ManagerAction::EndMaintenance, "end maintenance"),
            (ManagerAction::RemoveWaiter, "remove a waiter from a queue"),
            (ManagerAction::EndSession, "force-end a session"),
        ] {
            assert_eq!(
                alice.may_manage(action),
                Err(DomainError::Forbidden(format!(
                    "only an admin may {says}; alice is operator"
                )))
            );
            assert!(admin.may_manage(action).is_ok() && anyone.may_manage(action).is_ok());
        }
        assert!(viewer.may_lock(LockMode::Exclusive).is_err());
        assert!(viewer.may_lock(LockMode::Observer).is_ok());
        assert!(
            viewer.may_run(Access::Control).is_err() && viewer.may_run(Access::Observe).is_ok()
        );
        assert!(alice.may_run(Access::Control).is_ok());
        let list = vec!["bob".to_string(), "role:observer".to_string()];
        assert!(alice.may_use_equipment("psu", Some(&list)).is_err());
        assert!(
            Actor::user("bob", Role::Operator)
                .may_use_equipment("psu", Some(&list))
                .is_ok()
        );
        assert!(viewer.may_use_equipment("psu", Some(&list)).is_ok());
        assert!(admin.may_use_equipment("psu", Some(&list)).is_ok());
        assert!(alice.may_use_equipment("psu", None).is_ok());
    }

    #[test]
    fn allow_lists_name_users_or_known_roles() {
        let list = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert!(check_allow_list(&list(&["alice", "a.b@lab", "role:observer"])).is_ok());
        for bad in ["role:wizard", "role:", "Role:admin", "alice smith", ""] {
            let error = check_allow_list(&list(&["alice", bad])).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
