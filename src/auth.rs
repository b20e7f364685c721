//! Who is asking: API tokens and their verification. Tokens are 256 random
//! bits, shown once at creation and stored only as their SHA-256. Verified
//! tokens are cached, so a request costs a hash and a map lookup; the cache
//! is dropped whenever the store's token version changes (a revocation,
//! also one made by `lablink token revoke` in another process, is seen
//! within `REFRESH_EVERY`).
//!
//! Anyone who can reach the server can send a bad token, so verifying one
//! (and looking for token changes) only ever reads the store
//! (`Store::read`): no write transaction, no commit to wait for, no fsync.
//! Refused tokens are remembered for a short while, in a bounded cache.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::domain::{Actor, Role, Timestamp};
use crate::storage::{Store, StoreError, TokenRecord};

/// How often a running server looks for token changes made elsewhere.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
const TOKEN_PREFIX: &str = "llk_";
/// How long a refused token is remembered. Token changes clear it at
/// once; this only bounds how long a stale answer could last if the
/// refresh itself fails.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// At most this many refused tokens are remembered (the oldest go first),
/// so sending random tokens cannot grow memory.
const REFUSED_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
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
    /// A header of another scheme (Basic, ...); says which, if it is one.
    #[error(
        "the Authorization header {0}: use a Bearer token (Authorization: Bearer <token>, made with `lablink token create`)"
    )]
    NotBearer(String),
    #[error(
        "access_token in the query string is accepted on /api/ws only: use a Bearer token (Authorization: Bearer <token>)"
    )]
    QueryTokenNotHere,
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

/// Whether `token` looks like one this server makes (`llk_` + 64 hex
/// digits); anything else is refused without a look in the store.
fn token_shaped(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn with_read<R: Send + 'static>(
    store: &dyn Store,
    f: impl FnMut(&mut dyn crate::storage::Tx) -> Result<R, StoreError> + Send + 'static,
) -> impl Future<Output = Result<R, StoreError>> + Send + '_ {
    store.query(f)
}

/// Makes a new token for `user`; returns it (shown once) and its record.
pub async fn create_token(
    store: &dyn Store,
    user: &str,
    role: Role,
    now: Timestamp,
) -> Result<(String, TokenRecord), TokenError> {
    if !crate::domain::access::valid_user_name(user) {
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
    let saved = record.clone();
    store.write(move |tx| tx.save_token(&saved)).await?;
    Ok((token, record))
}

pub async fn list_tokens(store: &dyn Store) -> Result<Vec<TokenRecord>, TokenError> {
    Ok(with_read(store, |tx| tx.tokens()).await?)
}

pub async fn revoke_token(store: &dyn Store, id: &str, now: Timestamp) -> Result<(), TokenError> {
    let token = id.to_owned();
    if store.write(move |tx| tx.revoke_token(&token, now)).await? {
        Ok(())
    } else {
        Err(TokenError::NoSuchToken(id.into()))
    }
}

/// What a request presented as credentials; the API layer decides which
/// (the query string counts on `/api/ws` only).
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    None,
    /// The `Authorization` header's value.
    Header(&'a str),
    /// `?access_token=` on a route that accepts it.
    QueryToken(&'a str),
    /// `?access_token=` (and no header) on a route that does not accept it.
    MisplacedQueryToken,
}

/// The token a request was verified with (its hash), so that a
/// long-lived connection can be checked again when tokens change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential(String);

/// A verified caller, and the token it used (`None` with authentication off).
#[derive(Clone, Debug)]
pub struct Verified {
    pub actor: Actor,
    pub credential: Option<Credential>,
}

#[derive(Default)]
struct Cache {
    /// Bumped whenever the cache is dropped, so an answer read from the
    /// store before a token change is not cached after it.
    generation: u64,
    /// Live tokens by hash: at most one entry per token in the store.
    verified: HashMap<String, Actor>,
    /// Refused hashes and until when that answer holds.
    refused: HashMap<String, Instant>,
    /// `refused`'s keys, oldest first (may repeat a key; never longer than
    /// `REFUSED_MAX`).
    refused_order: VecDeque<String>,
}

impl Cache {
    fn refuse(&mut self, key: String, until: Instant, now: Instant) {
        while let Some(oldest) = self.refused_order.front() {
            let expired = self.refused.get(oldest).is_none_or(|t| *t <= now);
            if !expired && self.refused_order.len() < REFUSED_MAX {
                break;
            }
            if let Some(oldest) = self.refused_order.pop_front() {
                self.refused.remove(&oldest);
            }
        }
        self.refused.insert(key.clone(), until);
        self.refused_order.push_back(key);
    }
}

/// Verifies callers against the store, with a cache of answers.
pub struct Auth {
    mode: AuthMode,
    store: Arc<dyn Store>,
    cache: RwLock<Cache>,
    version: AtomicU64,
    /// The cache's generation, for connections that re-check their token
    /// whenever tokens change.
    changes: watch::Sender<u64>,
}

impl Auth {
    pub fn new(mode: AuthMode, store: Arc<dyn Store>) -> Self {
        Self {
            mode,
            store,
            cache: RwLock::new(Cache::default()),
            version: AtomicU64::new(u64::MAX),
            changes: watch::channel(0).0,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent `credentials`.
    pub async fn verify(&self, credentials: Credentials<'_>) -> Result<Verified, AuthError> {
        self.verify_at(credentials, Instant::now()).await
    }

    async fn verify_at(
        &self,
        credentials: Credentials<'_>,
        now: Instant,
    ) -> Result<Verified, AuthError> {
        if self.mode == AuthMode::Off {
            return Ok(Verified {
                actor: Actor::anyone(),
                credential: None,
            });
        }
        let token = match credentials {
            Credentials::None => return Err(AuthError::Missing),
            Credentials::MisplacedQueryToken => return Err(AuthError::QueryTokenNotHere),
            Credentials::QueryToken(token) => token.trim(),
            Credentials::Header(header) => bearer(header)?,
        };
        if !token_shaped(token) {
            return Err(AuthError::Invalid);
        }
        let credential = Credential(hash(token));
        let actor = self.check_at(&credential, now).await?;
        Ok(Verified {
            actor,
            credential: Some(credential),
        })
    }

    /// Who `credential` belongs to, if it is still valid.
    pub async fn check(&self, credential: &Credential) -> Result<Actor, AuthError> {
        self.check_at(credential, Instant::now()).await
    }

    async fn check_at(&self, credential: &Credential, now: Instant) -> Result<Actor, AuthError> {
        let key = &credential.0;
        let generation = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(actor) = cache.verified.get(key) {
                return Ok(actor.clone());
            }
            if cache.refused.get(key).is_some_and(|until| now < *until) {
                return Err(AuthError::Invalid);
            }
            cache.generation
        };
        let hashed = key.clone();
        let record = with_read(self.store.as_ref(), move |tx| tx.token_by_hash(&hashed)).await?;
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let remember = cache.generation == generation;
        match record {
            Some(r) if r.revoked_at.is_none() => {
                let actor = Actor::user(&r.user, r.role);
                if remember {
                    cache.verified.insert(key.clone(), actor.clone());
                }
                Ok(actor)
            }
            _ => {
                if remember {
                    cache.refuse(key.clone(), now + REFUSED_FOR, now);
                }
                Err(AuthError::Invalid)
            }
        }
    }

    /// Drops the cache if tokens changed in the store since last time.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let version = with_read(self.store.as_ref(), |tx| tx.tokens_version()).await?;
        if self.version.swap(version, Ordering::SeqCst) != version {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            let generation = cache.generation + 1;
            *cache = Cache {
                generation,
                ..Cache::default()
            };
            drop(cache);
            self.changes.send_replace(generation);
        }
        Ok(())
    }

    /// Completes once `credential` is no longer valid (revoked), checking
    /// whenever tokens change. Cancel-safe. A store that cannot answer
    /// right now ends nothing: the next change checks again.
    pub async fn revoked(&self, credential: &Credential, changes: &mut watch::Receiver<u64>) {
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            match self.check(credential).await {
                Err(AuthError::Invalid) => return,
                Err(e) => tracing::warn!(error = %e, "cannot re-check a connection's token"),
                Ok(_) => {}
            }
        }
    }

    /// Ticks whenever tokens change (see `revoked`).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The token of an `Authorization` header; the scheme's case does not
/// matter (RFC 9110), any scheme but Bearer is refused as such.
fn bearer(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, token) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Name the scheme only if it looks like one: a header that is a
        // bare token must not be echoed into answers and logs.
        let named =
            (1..=20).contains(&scheme.len()) && scheme.bytes().all(|b| b.is_ascii_alphabetic());
        return Err(AuthError::NotBearer(if named {
            format!("uses the {scheme} scheme")
        } else {
            "is not a Bearer token".into()
        }));
    }
    match token.trim() {
        "" => Err(AuthError::Missing),
        token => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::counting::Counting;
    use crate::storage::sqlite::{SqliteOptions, SqliteStore};

    fn sqlite(dir: &std::path::Path) -> SqliteStore {
        SqliteStore::open(
            &SqliteOptions::from_url("sqlite://t.db?synchronous=normal", dir).unwrap(),
        )
        .unwrap()
    }

    fn header(token: &str) -> Credentials<'_> {
        Credentials::Header(token)
    }

    async fn actor(auth: &Auth, credentials: Credentials<'_>) -> Result<Actor, AuthError> {
        auth.verify(credentials).await.map(|v| v.actor)
    }

    #[tokio::test]
    async fn tokens_are_random_hashed_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(sqlite(dir.path()));
        let now = Timestamp::from_millis(0);
        let (token, record) = create_token(store.as_ref(), "alice", Role::Operator, now)
            .await
            .unwrap();
        let (other, _) = create_token(store.as_ref(), "alice", Role::Operator, now)
            .await
            .unwrap();
        assert_ne!(token, other);
        assert_eq!(token.len(), 4 + 64, "256 bits, hex");
        let listed = list_tokens(store.as_ref()).await.unwrap();
        assert!(
            listed
                .iter()
                .all(|t| t.hash != token && !t.hash.contains(&token[4..])),
            "only hashes are kept"
        );

        let auth = Auth::new(AuthMode::Required, store.clone());
        auth.refresh().await.unwrap();
        let bearer = format!("Bearer {token}");
        assert_eq!(
            actor(&auth, header(&bearer)).await.unwrap(),
            Actor::user("alice", Role::Operator)
        );
        assert!(matches!(
            actor(&auth, Credentials::None).await,
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            actor(&auth, header("Bearer llk_00")).await,
            Err(AuthError::Invalid)
        ));

        revoke_token(store.as_ref(), &record.id, now).await.unwrap();
        assert!(
            actor(&auth, header(&bearer)).await.is_ok(),
            "cached until refreshed"
        );
        auth.refresh().await.unwrap();
        assert!(matches!(
            actor(&auth, header(&bearer)).await,
            Err(AuthError::Invalid)
        ));
        assert!(
            actor(&auth, header(&format!("Bearer {other}")))
                .await
                .is_ok()
        );
        assert!(matches!(
            revoke_token(store.as_ref(), &record.id, now).await,
            Err(TokenError::NoSuchToken(_))
        ));
        assert!(matches!(
            create_token(store.as_ref(), "bad user", Role::Admin, now).await,
            Err(TokenError::BadUser(_))
        ));
        let memory = crate::storage::memory::MemoryStore::new();
        assert!(matches!(
            create_token(&memory, "a", Role::Admin, now).await,
            Err(TokenError::NotDurable(_))
        ));
        assert_eq!(
            actor(&Auth::new(AuthMode::Off, store), Credentials::None)
                .await
                .unwrap(),
            Actor::anyone()
        );
    }

    #[tokio::test]
    async fn the_scheme_is_bearer_in_any_case_and_others_are_told_to_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(sqlite(dir.path()));
        let now = Timestamp::from_millis(0);
        let (token, _) = create_token(store.as_ref(), "alice", Role::Operator, now)
            .await
            .unwrap();
        let auth = Auth::new(AuthMode::Required, store);
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme}  {token} ");
            assert!(actor(&auth, header(&value)).await.is_ok(), "{value}");
        }
        assert!(actor(&auth, Credentials::QueryToken(&token)).await.is_ok());
        let basic = actor(&auth, header("Basic YWxpY2U6c2VjcmV0"))
            .await
            .unwrap_err();
        assert!(matches!(basic, AuthError::NotBearer(_)));
        assert!(matches!(bearer("Bearer "), Err(AuthError::Missing)));
        assert!(matches!(bearer("bearer"), Err(AuthError::Missing)));
        assert!(
            basic.to_string().contains("Basic scheme")
                && basic.to_string().contains("use a Bearer token"),
            "{basic}"
        );
        // A bare token is refused without being repeated back.
        let bare = actor(&auth, header(&token)).await.unwrap_err();
        assert!(matches!(bare, AuthError::NotBearer(_)));
        assert!(!bare.to_string().contains(&token[4..]), "{bare}");
        let misplaced = actor(&auth, Credentials::MisplacedQueryToken)
            .await
            .unwrap_err();
        assert!(
            misplaced.to_string().contains("/api/ws only"),
            "{misplaced}"
        );
    }

    #[tokio::test]
    async fn verifying_and_refreshing_never_write_and_refusals_are_cached_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting::new(Box::new(sqlite(dir.path()))));
        let now = Timestamp::from_millis(0);
        let (token, record) = create_token(&*store.inner, "alice", Role::Operator, now)
            .await
            .unwrap();
        let auth = Auth::new(AuthMode::Required, store.clone());
        let unknown = format!("Bearer llk_{}", "0".repeat(64));
        let start = Instant::now();
        auth.refresh().await.unwrap();
        for credentials in [
            header(&unknown),
            header("Bearer not-a-token"),
            header("Basic YWxpY2U6"),
            Credentials::None,
        ] {
            assert!(auth.verify_at(credentials, start).await.is_err());
        }
        assert!(
            auth.verify_at(header(&format!("Bearer {token}")), start)
                .await
                .is_ok()
        );
        auth.refresh().await.unwrap();
        assert_eq!(
            store.transactions.load(Ordering::SeqCst),
            0,
            "no write transaction, commit or fsync"
        );
        let reads = store.reads.load(Ordering::SeqCst);

        // A refused token is remembered for a while, then looked up again.
        assert!(auth.verify_at(header(&unknown), start).await.is_err());
        assert_eq!(store.reads.load(Ordering::SeqCst), reads, "cached");
        assert!(
            auth.verify_at(header(&unknown), start + REFUSED_FOR)
                .await
                .is_err()
        );
        assert_eq!(store.reads.load(Ordering::SeqCst), reads + 1, "expired");

        // However many different tokens are sent, the cache stays bounded.
        for n in 0..REFUSED_MAX + 100 {
            let token = format!("Bearer llk_{n:064x}");
            assert!(auth.verify_at(header(&token), start).await.is_err());
        }
        {
            let cache = auth.cache.read().unwrap();
            assert!(cache.refused.len() <= REFUSED_MAX && cache.refused_order.len() <= REFUSED_MAX);
        }
        assert_eq!(store.transactions.load(Ordering::SeqCst), 0);

        // A read cannot write, even by mistake.
        let id = record.id.clone();
        let revoke = store
            .inner
            .read(Box::new(move |tx| tx.revoke_token(&id, now).map(drop)))
            .await;
        assert!(
            matches!(revoke, Err(StoreError::Unavailable(_))),
            "{revoke:?}"
        );
        assert!(
            list_tokens(&*store.inner).await.unwrap()[0]
                .revoked_at
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_revocation_is_noticed_by_those_watching_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(sqlite(dir.path()));
        let now = Timestamp::from_millis(0);
        let (token, record) = create_token(store.as_ref(), "alice", Role::Operator, now)
            .await
            .unwrap();
        let (other, _) = create_token(store.as_ref(), "bob", Role::Operator, now)
            .await
            .unwrap();
        let auth = Auth::new(AuthMode::Required, store.clone());
        auth.refresh().await.unwrap();
        let credential = async |t: &str| {
            auth.verify(header(&format!("Bearer {t}")))
                .await
                .unwrap()
                .credential
                .unwrap()
        };
        let (alice, bob) = (credential(&token).await, credential(&other).await);
        let mut changes = auth.changes();
        revoke_token(store.as_ref(), &record.id, now).await.unwrap();
        auth.refresh().await.unwrap();
        auth.revoked(&alice, &mut changes).await;
        let changes = auth.changes();
        auth.refresh().await.unwrap(); // nothing changed: nothing to notice
        assert!(!changes.has_changed().unwrap());
        assert!(auth.check(&bob).await.is_ok());
    }
}
