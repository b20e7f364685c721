//! Who is asking: API tokens and their verification. Tokens are 256 random
//! bits, shown once at creation and stored only as their SHA-256. Verified
//! tokens are cached, so a request costs a hash and a map lookup; the cache
//! is dropped whenever the store's token version changes (a revocation,
//! also one made by `lablink token revoke` in another process, is seen
//! within `REFRESH_EVERY`).

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::domain::{Actor, Role, Timestamp};
use crate::storage::{Store, StoreError, TokenRecord};

/// How often a running server looks for token changes made elsewhere.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
const TOKEN_PREFIX: &str = "llk_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every API request needs `Authorization: Bearer <token>`.
    Required,
    /// Nobody is asked who they are (loopback use).
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this server requires an API token: send Authorization: Bearer <token> (create one with `lablink token create`)"
    )]
    Missing,
    #[error("the API token is not valid (unknown or revoked)")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("user names are 1 to 64 letters, digits, '.', '_', '-' or '@'; got {0:?}")]
    BadUser(String),
    #[error("no live token with id {0:?}")]
    NoSuchToken(String),
    #[error(
        "the {0} store keeps nothing after the server stops: tokens need a durable store (sqlite://...)"
    )]
    NotDurable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
}

/// Runs one token operation in its own transaction.
fn with_tx<R: Send>(
    store: &dyn Store,
    mut f: impl FnMut(&mut dyn crate::storage::Tx) -> Result<R, StoreError> + Send,
) -> Result<R, StoreError> {
    let mut out = None;
    store.transaction(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    Ok(out.expect("the transaction ran"))
}

/// Makes a new token for `user`; returns it (shown once) and its record.
pub fn create_token(
    store: &dyn Store,
    user: &str,
    role: Role,
    now: Timestamp,
) -> Result<(String, TokenRecord), TokenError> {
    if !valid_user(user) {
        return Err(TokenError::BadUser(user.into()));
    }
    if !store.durable() {
        return Err(TokenError::NotDurable(store.describe()));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let hashed = hash(&token);
    let record = TokenRecord {
        id: format!("tok_{}", &hashed[..12]),
        user: user.into(),
        role,
        hash: hashed,
        created_at: now,
        revoked_at: None,
    };
    with_tx(store, |tx| tx.save_token(&record))?;
    Ok((token, record))
}

pub fn list_tokens(store: &dyn Store) -> Result<Vec<TokenRecord>, TokenError> {
    Ok(with_tx(store, |tx| tx.tokens())?)
}

pub fn revoke_token(store: &dyn Store, id: &str, now: Timestamp) -> Result<(), TokenError> {
    if with_tx(store, |tx| tx.revoke_token(id, now))? {
        Ok(())
    } else {
        Err(TokenError::NoSuchToken(id.into()))
    }
}

/// Verifies callers against the store, with a cache of verified tokens.
pub struct Auth {
    mode: AuthMode,
    store: Arc<dyn Store>,
    verified: RwLock<HashMap<String, Actor>>,
    version: AtomicU64,
}

impl Auth {
    pub fn new(mode: AuthMode, store: Arc<dyn Store>) -> Self {
        Self {
            mode,
            store,
            verified: RwLock::new(HashMap::new()),
            version: AtomicU64::new(u64::MAX),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent `authorization` (the header's value, or a token alone).
    pub fn verify(&self, authorization: Option<&str>) -> Result<Actor, AuthError> {
        if self.mode == AuthMode::Off {
            return Ok(Actor::anyone());
        }
        let raw = authorization.ok_or(AuthError::Missing)?.trim();
        let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::Invalid);
        }
        let key = hash(token);
        if let Some(actor) = self
            .verified
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(actor.clone());
        }
        let record = with_tx(self.store.as_ref(), |tx| tx.token_by_hash(&key))?;
        match record {
            Some(r) if r.revoked_at.is_none() => {
                let actor = Actor::user(&r.user, r.role);
                self.verified
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, actor.clone());
                Ok(actor)
            }
            _ => Err(AuthError::Invalid),
        }
    }

    /// Drops the cache if tokens changed in the store since last time.
    pub fn refresh(&self) -> Result<(), StoreError> {
        let version = with_tx(self.store.as_ref(), |tx| tx.tokens_version())?;
        if self.version.swap(version, Ordering::SeqCst) != version {
            self.verified
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::{SqliteOptions, SqliteStore};

    #[test]
    fn tokens_are_random_hashed_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                &SqliteOptions::from_url("sqlite://t.db?synchronous=normal", dir.path()).unwrap(),
            )
            .unwrap(),
        );
        let now = Timestamp::from_millis(0);
        let (token, record) = create_token(store.as_ref(), "alice", Role::Operator, now).unwrap();
        let (other, _) = create_token(store.as_ref(), "alice", Role::Operator, now).unwrap();
        assert_ne!(token, other);
        assert_eq!(token.len(), 4 + 64, "256 bits, hex");
        let listed = list_tokens(store.as_ref()).unwrap();
        assert!(
            listed
                .iter()
                .all(|t| t.hash != token && !t.hash.contains(&token[4..])),
            "only hashes are kept"
        );

        let auth = Auth::new(AuthMode::Required, store.clone());
        auth.refresh().unwrap();
        assert_eq!(
            auth.verify(Some(&format!("Bearer {token}"))).unwrap(),
            Actor::user("alice", Role::Operator)
        );
        assert!(matches!(auth.verify(None), Err(AuthError::Missing)));
        assert!(matches!(
            auth.verify(Some("Bearer llk_00")),
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            auth.verify(Some("Basic YWxpY2U6")),
            Err(AuthError::Invalid)
        ));

        revoke_token(store.as_ref(), &record.id, now).unwrap();
        assert!(
            auth.verify(Some(&format!("Bearer {token}"))).is_ok(),
            "cached until refreshed"
        );
        auth.refresh().unwrap();
        assert!(matches!(
            auth.verify(Some(&format!("Bearer {token}"))),
            Err(AuthError::Invalid)
        ));
        assert!(auth.verify(Some(&format!("Bearer {other}"))).is_ok());
        assert!(matches!(
            revoke_token(store.as_ref(), &record.id, now),
            Err(TokenError::NoSuchToken(_))
        ));
        assert!(matches!(
            create_token(store.as_ref(), "bad user", Role::Admin, now),
            Err(TokenError::BadUser(_))
        ));
        let memory = crate::storage::memory::MemoryStore::new();
        assert!(matches!(
            create_token(&memory, "a", Role::Admin, now),
            Err(TokenError::NotDurable(_))
        ));
        assert_eq!(
            Auth::new(AuthMode::Off, store).verify(None).unwrap(),
            Actor::anyone()
        );
    }
}
