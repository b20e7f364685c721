//! Criterion benchmarks: what one operation costs with a handful of sessions
//! and instruments versus a facility's worth (100,000 live sessions, 10,000
//! instruments each with a holder and a queue), on the memory and SQLite
//! stores; the reaper's step with nothing due; the pure domain; and a
//! cached token check. Run with `cargo bench --bench scale`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lablink::auth::{self, Auth, AuthMode, Credentials};
use lablink::clock::ManualClock;
use lablink::domain::{
    Actor, EquipmentId, EquipmentLocks, LockMode, LockPolicy, LockRequest, Role, Session,
    SessionId, Timeout, Timestamp,
};
use lablink::drivers::{EquipmentConfig, Instruments};
use lablink::service::{AcquireInput, Policy, Service};
use lablink::storage::Store;
use lablink::storage::memory::MemoryStore;
use lablink::storage::sqlite::{SqliteOptions, SqliteStore};

const START: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const WAITERS: usize = 9;

fn psu(id: &str) -> EquipmentConfig {
    EquipmentConfig {
        id: id.into(),
        driver: "sim-psu".into(),
        name: None,
        allow: None,
        tags: Vec::new(),
        settings: toml::Table::new(),
    }
}

/// `instruments` busy instruments, each held by one session with
/// `WAITERS` more queued (10 sessions per instrument), written straight
/// into the store in one transaction; plus an idle `bench` instrument.
async fn populate(store: &dyn Store, instruments: usize) {
    store
        .write(move |tx| {
            let mut out = Ok(());
            for i in 0..instruments {
                let mut locks =
                    EquipmentLocks::new(EquipmentId::parse(&format!("psu{i}")).unwrap());
                for w in 0..=WAITERS {
                    let id = SessionId::parse(&format!("s{i}-{w}")).unwrap();
                    tx.save_session(&Session {
                        id: id.clone(),
                        client_name: "rig".into(),
                        client_ip: None,
                        created_at: START,
                        last_activity: START,
                        timeout: Timeout::from_millis(3_600_000),
                        metadata: Default::default(),
                        user: None,
                    })?;
                    let request = LockRequest {
                        session_id: id,
                        mode: LockMode::Exclusive,
                        timeout: Timeout::from_millis(3_600_000),
                        queue_if_busy: true,
                        priority: 0,
                        max_wait: lablink::domain::Timeout::NONE,
                        holder: Default::default(),
                        maintenance_exempt: false,
                        claim_within: lablink::domain::Timeout::NONE,
                    };
                    out = locks
                        .acquire(&request, START, LockPolicy::default(), &mut Vec::new())
                        .map(|_| ());
                }
                tx.save_equipment_locks(&locks)?;
            }
            Ok(out)
        })
        .await
        .unwrap()
        .unwrap();
}

fn service(store: Arc<dyn Store>, instruments: usize) -> Service {
    let mut configs: Vec<EquipmentConfig> =
        (0..instruments).map(|i| psu(&format!("psu{i}"))).collect();
    configs.push(psu("bench"));
    let instruments = Instruments::from_configs(&configs, Path::new(".")).unwrap();
    Service::new(
        store,
        Arc::new(ManualClock::new(START)),
        Arc::new(instruments),
        Policy::default(),
    )
}

fn stores(dir: &Path) -> Vec<(&'static str, Arc<dyn Store>)> {
    let sqlite = SqliteOptions::from_url("sqlite://bench.db?synchronous=normal", dir).unwrap();
    vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", Arc::new(SqliteStore::open(&sqlite).unwrap())),
    ]
}

fn scale(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (size, instruments) in [("10", 1), ("100k", 10_000)] {
        let dir = tempfile::tempdir().unwrap();
        for (name, store) in stores(dir.path()) {
            runtime.block_on(populate(store.as_ref(), instruments));
            let service = service(store, instruments);
            let session = runtime
                .block_on(service.create_session(lablink::service::NewSession {
                    actor: Actor::anyone(),
                    client_name: None,
                    client_ip: None,
                    timeout: None,
                    metadata: Default::default(),
                }))
                .unwrap()
                .value
                .id;
            let bench = EquipmentId::parse("bench").unwrap();
            c.bench_function(&format!("{name}/{size} sessions/acquire+release"), |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        let input = AcquireInput {
                            actor: Actor::anyone(),
                            session_id: session.clone(),
                            mode: LockMode::Exclusive,
                            timeout: None,
                            queue_if_busy: false,
                            priority: 0,
                            max_wait: lablink::domain::Timeout::NONE,
                            claim_within: None,
                            client: Default::default(),
                        };
                        service.acquire(bench.clone(), input).await.unwrap();
                        service
                            .release(&bench, &session, false, &Actor::anyone())
                            .await
                            .unwrap();
                    })
                })
            });
            let busy = EquipmentId::parse("psu0").unwrap();
            c.bench_function(&format!("{name}/{size} sessions/lock status"), |b| {
                b.iter(|| {
                    runtime
                        .block_on(service.lock_state(black_box(&busy)))
                        .unwrap()
                })
            });
            c.bench_function(
                &format!("{name}/{size} sessions/reaper step, nothing due"),
                |b| b.iter(|| runtime.block_on(service.expire_due()).unwrap()),
            );
        }
    }
}

fn domain(c: &mut Criterion) {
    let mut locks = EquipmentLocks::new(EquipmentId::parse("psu").unwrap());
    let holder = SessionId::parse("holder").unwrap();
    for w in 0..WAITERS {
        let request = LockRequest {
            session_id: SessionId::parse(&format!("w{w}")).unwrap(),
            mode: LockMode::Exclusive,
            timeout: Timeout::NONE,
            queue_if_busy: true,
            priority: 0,
            max_wait: lablink::domain::Timeout::NONE,
            holder: Default::default(),
            maintenance_exempt: false,
            claim_within: lablink::domain::Timeout::NONE,
        };
        locks
            .acquire(&request, START, LockPolicy::default(), &mut Vec::new())
            .unwrap();
    }
    c.bench_function("domain/acquire+release a refresh behind 9 waiters", |b| {
        let request = LockRequest {
            session_id: holder.clone(),
            mode: LockMode::Exclusive,
            timeout: Timeout::from_millis(1000),
            queue_if_busy: true,
            priority: 0,
            max_wait: lablink::domain::Timeout::NONE,
            holder: Default::default(),
            maintenance_exempt: false,
            claim_within: lablink::domain::Timeout::NONE,
        };
        b.iter(|| {
            let mut locks = locks.clone();
            let mut events = Vec::new();
            locks
                .acquire(&request, START, LockPolicy::default(), &mut events)
                .unwrap();
            black_box(locks.position_of(&holder));
        })
    });
}

fn tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &SqliteOptions::from_url("sqlite://tokens.db?synchronous=normal", dir.path()).unwrap(),
        )
        .unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (token, _) = runtime
        .block_on(auth::create_token(
            store.as_ref(),
            "alice",
            Role::Operator,
            START,
        ))
        .unwrap();
    let auth = Auth::new(AuthMode::Required, store);
    let header = format!("Bearer {token}");
    runtime
        .block_on(auth.verify(Credentials::Header(&header)))
        .unwrap();
    c.bench_function("auth/verify a cached token", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.verify(black_box(Credentials::Header(&header))))
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = scale, domain, tokens
}
criterion_main!(benches);
