//! The history at scale: makes a SQLite database of N events (default 10
//! million) through the real store, shaped like a busy facility's, then
//! times every combination of the history filters (`GET /api/locks/events`)
//! against it, each with a common and a rare value, on the first page and
//! deep in the history. Run with
//! `cargo bench --bench history -- [--events N] [--db PATH] [--analytics-only]`;
//! the database is kept (default `target/history-bench/events-N.db`) and
//! reused.
//!
//! Then the lock analytics (`Service::analytics`) over the last 1, 7 and 31
//! days for all instruments, one instrument and one user: before, as the
//! plain fold over every event in the window (what the endpoint did before
//! the rollups), and after, from the rollups (summed first, timed once).
//!
//! With `LABLINK_BENCH_POSTGRES=postgres://USER@HOST:PORT/DB` set, the same
//! history goes through the real PostgreSQL store instead, into a database
//! `lablink_history_bench_N` on that server (created by the URL's user if
//! missing, kept and reused; `--db NAME` names another), and the sizes are
//! PostgreSQL's (`pg_total_relation_size` of the events table and each of
//! its indexes).
//!
//! The shape: 40 instruments, the first ones far busier (weights 1/(i+1));
//! 32 long-running scripts cycling acquire/release (a third of the events)
//! and short interactive sessions (a few cycles each, some queueing, some
//! observing); about 1% of locks expire and 0.05% are force-released; one
//! event every 0.8 s on average, so 10 million span about 90 days.

use std::path::PathBuf;
use std::time::Instant;

use std::sync::Arc;

use lablink::clock::ManualClock;
use lablink::domain::analytics::{GroupBy, Usage};
use lablink::domain::{EndReason, EquipmentId, Event, EventKind, LockMode, SessionId, Timestamp};
use lablink::drivers::{EquipmentConfig, Instruments};
use lablink::service::{AnalyticsInput, Policy, Service};
use lablink::storage::postgres::{PostgresOptions, PostgresStore};
use lablink::storage::sqlite::{SqliteOptions, SqliteStore};
use lablink::storage::{EventQuery, Store};

const START: i64 = 1_790_000_000_000;
const INSTRUMENTS: usize = 40;
const SCRIPTS: usize = 32;

/// A small deterministic generator (the same database every time).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_10k: u64) -> bool {
        self.below(10_000) < per_10k
    }
}

fn instrument(rng: &mut Rng) -> String {
    // Weights 1/(i+1): instrument 0 is about 23% of the traffic.
    let total: f64 = (1..=INSTRUMENTS).map(|i| 1.0 / i as f64).sum();
    let mut x = (rng.below(1_000_000) as f64 / 1_000_000.0) * total;
    for i in 0..INSTRUMENTS {
        x -= 1.0 / (i + 1) as f64;
        if x <= 0.0 {
            return format!("instrument_{i:02}");
        }
    }
    format!("instrument_{:02}", INSTRUMENTS - 1)
}

fn script(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

struct Gen {
    rng: Rng,
    at: i64,
    next_session: u64,
    fencing: u64,
}

impl Gen {
    fn event(
        &mut self,
        kind: EventKind,
        equipment: Option<&str>,
        session: &str,
        user: &str,
    ) -> Event {
        self.at += 1 + self.rng.below(1_600) as i64;
        let mut e = Event::new(kind, Timestamp::from_millis(self.at));
        e.equipment_id = equipment.map(|id| EquipmentId::parse(id).unwrap());
        e.session_id = Some(SessionId::parse(session).unwrap());
        e.user = Some(user.to_string());
        e
    }

    /// One lock held and let go: acquired, then released, expired or forced.
    fn cycle(&mut self, out: &mut Vec<Event>, session: &str, user: &str, observer: bool) {
        let equipment = instrument(&mut self.rng);
        let eq = Some(equipment.as_str());
        if !observer && self.rng.chance(300) {
            let queue_id = Some(format!("queue_{equipment}_{}", self.fencing));
            let mut q = self.event(EventKind::Queued, eq, session, user);
            q.position = Some(1 + self.rng.below(3) as usize);
            q.queue_id = queue_id.clone();
            out.push(q);
            let mut d = self.event(EventKind::Dequeued, eq, session, user);
            d.queue_id = queue_id;
            if self.rng.chance(1_500) {
                out.push(d);
                return;
            }
            // Granted from the queue: recorded as `queue_processed`.
            self.fencing += 1;
            let mut p = d;
            p.event = EventKind::QueueProcessed;
            p.lock_mode = Some(LockMode::Exclusive);
            p.lock_id = Some(format!("lock_{equipment}_{}", self.fencing));
            p.fencing_token = Some(self.fencing);
            p.holder_user = Some(user.to_string());
            out.push(p);
            let mut r = self.event(EventKind::LockReleased, eq, session, user);
            r.lock_mode = Some(LockMode::Exclusive);
            r.lock_id = Some(format!("lock_{equipment}_{}", self.fencing));
            r.holder_user = Some(user.to_string());
            out.push(r);
            return;
        }
        self.fencing += 1;
        let (got, released) = if observer {
            (
                EventKind::ObserverLockAcquired,
                EventKind::ObserverLockReleased,
            )
        } else {
            (EventKind::LockAcquired, EventKind::LockReleased)
        };
        // Every lock event names its grant, as the server's do.
        let mode = if observer {
            LockMode::Observer
        } else {
            LockMode::Exclusive
        };
        let lock_id = format!("lock_{equipment}_{}", self.fencing);
        let fencing = self.fencing;
        let grant = |mut e: Event| {
            e.lock_mode = Some(mode);
            e.lock_id = Some(lock_id.clone());
            e.fencing_token = Some(fencing);
            e.timeout_seconds = Some(300.0);
            e.holder_user = Some(user.to_string());
            e
        };
        let a = self.event(got, eq, session, user);
        out.push(grant(a));
        let end = if self.rng.chance(5) {
            let mut f = self.event(EventKind::LockForceReleased, eq, session, "admin");
            f.forced_by = Some(SessionId::parse("admin_session").unwrap());
            f.holder_user = Some(user.to_string());
            f
        } else if self.rng.chance(100) {
            let mut x = self.event(EventKind::LockExpired, eq, session, user);
            x.user = None;
            x.reason = Some(EndReason::Timeout);
            x
        } else {
            self.event(released, eq, session, user)
        };
        out.push(grant(end));
    }

    /// A short interactive session: created, a few cycles, ended.
    fn short_session(&mut self, out: &mut Vec<Event>) {
        self.next_session += 1;
        let session = format!(
            "{:08x}-1111-4000-8000-{:012x}",
            self.next_session,
            self.rng.next()
        );
        let user = format!("user_{:02}", self.rng.below(30));
        out.push(self.event(EventKind::SessionCreated, None, &session, &user));
        for _ in 0..1 + self.rng.below(8) {
            let observer = self.rng.chance(1_000);
            self.cycle(out, &session, &user, observer);
        }
        let (kind, user) = if self.rng.chance(1_000) {
            (EventKind::SessionExpired, None)
        } else {
            (EventKind::SessionEnded, Some(user.as_str()))
        };
        let mut end = self.event(kind, None, &session, user.unwrap_or("-"));
        end.user = user.map(str::to_string);
        end.locks_released = Some(0);
        out.push(end);
    }

    /// About `n` events in seq order.
    fn batch(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n + 40);
        while out.len() < n {
            if self.rng.below(3) == 0 {
                let s = self.rng.below(SCRIPTS as u64) as usize;
                self.cycle(&mut out, &script(s), &format!("ci_{s:02}"), false);
            } else {
                self.short_session(&mut out);
            }
        }
        out
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let events: u64 = arg("--events").map_or(10_000_000, |n| n.parse().expect("--events N"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var("LABLINK_BENCH_POSTGRES") {
        Ok(server) => {
            let name = arg("--db").unwrap_or_else(|| format!("lablink_history_bench_{events}"));
            let url = postgres_database(&server, &name);
            let options = PostgresOptions::from_url(&url).unwrap();
            let open = || -> Box<dyn Store> { Box::new(PostgresStore::open(&options).unwrap()) };
            runtime.block_on(run(events, open, || postgres_sizes(&url)));
        }
        Err(_) => {
            let db = arg("--db").map_or_else(
                || {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join(format!("target/history-bench/events-{events}.db"))
                },
                PathBuf::from,
            );
            let url = format!("sqlite://{}?synchronous=normal", db.display());
            let options = SqliteOptions::from_url(&url, std::path::Path::new(".")).unwrap();
            let open = || -> Box<dyn Store> { Box::new(SqliteStore::open(&options).unwrap()) };
            runtime.block_on(run(events, open, || sizes(&db)));
        }
    }
}

/// The URL of database `name` on the server of `server` (a URL to any
/// database there), created first if it does not exist.
fn postgres_database(server: &str, name: &str) -> String {
    let mut admin = postgres::Client::connect(server, postgres::NoTls).unwrap();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
    }
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    format!("{base}/{name}")
}

async fn run(events: u64, open: impl Fn() -> Box<dyn Store>, sizes: impl FnOnce() + Send) {
    let opening = Instant::now();
    let store = open();
    // Opening an older database migrates it: this is what that took.
    eprintln!("opened in {:.1?}", opening.elapsed());
    let have = store.query(|tx| tx.last_event_seq()).await.unwrap();
    if have < events {
        let started = Instant::now();
        let mut generator = Gen {
            rng: Rng(have + 1),
            at: START + have as i64 * 800,
            next_session: have,
            fencing: have,
        };
        let mut written = have;
        while written < events {
            let batch = generator.batch(20_000.min((events - written) as usize));
            written += batch.len() as u64;
            store
                .write(move |tx| tx.record_events(&mut batch.clone()))
                .await
                .unwrap();
            if written % 1_000_000 < 20_100 {
                eprintln!("{written} events ({:.0?})", started.elapsed());
            }
        }
        eprintln!("made {written} events in {:.0?}", started.elapsed());
    }
    drop(store);
    let analytics_only = std::env::args().any(|a| a == "--analytics-only");
    if !analytics_only {
        measure(open().as_ref()).await;
    }
    analytics(Arc::from(open())).await;
    // On a thread of its own: the PostgreSQL client blocks. Last, so the
    // sizes include the rollups.
    std::thread::scope(|scope| {
        scope.spawn(sizes);
    });
}

/// The newest event's `seq` and time.
async fn newest_event(store: &dyn Store) -> (u64, i64) {
    let last = store.query(|tx| tx.last_event_seq()).await.unwrap();
    let newest = store
        .query(move |tx| {
            tx.query_events(&EventQuery {
                after: Some(last - 1),
                limit: 1,
                ..EventQuery::default()
            })
        })
        .await
        .unwrap()[0]
        .timestamp
        .as_millis();
    (last, newest)
}

/// The plain fold over the window's events (the endpoint before the
/// rollups): returns the events read.
async fn fold(store: &dyn Store, input: &AnalyticsInput) -> u64 {
    let (since, until) = (input.since.unwrap(), input.until.unwrap());
    let equipment = input.equipment.first().cloned();
    let user = input.user.clone();
    let group_by = input.group_by;
    store
        .query(move |tx| {
            let mut usage = Usage::new(since, until, group_by, &[]);
            let (mut after, mut read) = (None, 0u64);
            loop {
                let page = tx.query_events(&EventQuery {
                    equipment_id: equipment.clone(),
                    since: Some(since),
                    until: Some(until),
                    after,
                    limit: 1_000,
                    ..EventQuery::default()
                })?;
                read += page.len() as u64;
                for e in &page {
                    if user.is_none() || e.holder_user == user {
                        usage.add(e);
                    }
                }
                after = page.last().and_then(|e| e.seq);
                if page.len() < 1_000 {
                    break;
                }
            }
            std::hint::black_box(usage.finish());
            Ok(read)
        })
        .await
        .unwrap()
}

/// Analytics over 1, 7 and 31 days, before (the fold) and after (the
/// rollups).
async fn analytics(store: Arc<dyn Store>) {
    let (_, newest) = newest_event(store.as_ref()).await;
    let configs: Vec<EquipmentConfig> = (0..INSTRUMENTS)
        .map(|i| EquipmentConfig {
            id: format!("instrument_{i:02}"),
            driver: "sim-load".into(),
            name: None,
            allow: None,
            tags: Vec::new(),
            settings: Default::default(),
        })
        .collect();
    let instruments = Instruments::from_configs(&configs, std::path::Path::new(".")).unwrap();
    // A minute after the newest event: everything can be summed.
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(newest + 60_000)));
    let service = Service::new(
        store.clone(),
        clock,
        Arc::new(instruments),
        Policy::default(),
    );
    let started = Instant::now();
    let summed = service.roll_up_history().await.unwrap();
    println!(
        "\nrollups: summed {summed} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let day = 86_400_000;
    println!(
        "\n| window | selection | before: events read | before: ms | after: events read | after: rollup rows | after: ms (median of 5) |\n|---|---|---|---|---|---|---|"
    );
    for days in [1, 7, 31] {
        for (name, equipment, user, group_by) in [
            ("all instruments", None, None, GroupBy::Equipment),
            ("all instruments, group_by=user", None, None, GroupBy::User),
            (
                "equipment_id=instrument_00",
                Some("instrument_00"),
                None,
                GroupBy::Equipment,
            ),
            ("user=ci_07", None, Some("ci_07"), GroupBy::Equipment),
        ] {
            // Not on the hour: both edges cut an hour.
            let until = newest - 1_234_567;
            let input = AnalyticsInput {
                since: Some(Timestamp::from_millis(until - days * day)),
                until: Some(Timestamp::from_millis(until)),
                equipment: equipment
                    .map(|e| EquipmentId::parse(e).unwrap())
                    .into_iter()
                    .collect(),
                user: user.map(str::to_string),
                group_by,
            };
            let started = Instant::now();
            let before_read = fold(store.as_ref(), &input).await;
            let before_ms = started.elapsed().as_secs_f64() * 1e3;
            let mut times = Vec::new();
            let mut report = None;
            for _ in 0..5 {
                let started = Instant::now();
                report = Some(service.analytics(input.clone()).await.unwrap());
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let report = report.unwrap();
            println!(
                "| {days} d | {name} | {before_read} | {before_ms:.0} | {} | {} | {:.1} |",
                report.events, report.rollup_rows, times[2]
            );
        }
    }
}

/// What the events table and each of its indexes take on PostgreSQL (after
/// a VACUUM ANALYZE, as autovacuum leaves a table that only grows).
fn postgres_sizes(url: &str) {
    let mut conn = postgres::Client::connect(url, postgres::NoTls).unwrap();
    conn.batch_execute("VACUUM ANALYZE events").unwrap();
    let count: i64 = conn
        .query_one("SELECT count(*) FROM events", &[])
        .unwrap()
        .get(0);
    let total: i64 = conn
        .query_one("SELECT pg_total_relation_size('events')", &[])
        .unwrap()
        .get(0);
    println!(
        "{count} events, events and its indexes {:.0} MB, {:.0} bytes an event",
        total as f64 / 1e6,
        total as f64 / count as f64
    );
    println!("| table or index | MB | bytes an event |\n|---|---|---|");
    let parts = conn
        .query(
            "SELECT 'events (the rows, with TOAST)', pg_table_size('events')
             UNION ALL
             SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
             FROM pg_index WHERE indrelid = 'events'::regclass
             ORDER BY 2 DESC",
            &[],
        )
        .unwrap();
    for row in parts {
        let (name, bytes): (String, i64) = (row.get(0), row.get(1));
        println!(
            "| {name} | {:.0} | {:.1} |",
            bytes as f64 / 1e6,
            bytes as f64 / count as f64
        );
    }
}

/// The file's size and what each table and index takes (dbstat).
fn sizes(db: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let file = std::fs::metadata(db).unwrap().len();
    println!(
        "{count} events, file {:.0} MB, {:.0} bytes an event",
        file as f64 / 1e6,
        file as f64 / count as f64
    );
    let parts: Result<Vec<(String, i64)>, _> = conn
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect());
    match parts {
        Ok(parts) => {
            println!("| table or index | MB | bytes an event |\n|---|---|---|");
            for (name, bytes) in parts.into_iter().filter(|(_, b)| *b > 1_000_000) {
                println!(
                    "| {name} | {:.0} | {:.1} |",
                    bytes as f64 / 1e6,
                    bytes as f64 / count as f64
                );
            }
        }
        Err(e) => println!("(no dbstat: {e})"),
    }
}

/// Times every filter combination (equipment, session, event, since,
/// until), each with its values common and rare, on the first page and
/// from a cursor in the middle; prints the slowest of each combination.
async fn measure(store: &dyn Store) {
    let (last, newest) = newest_event(store).await;
    let day = 86_400_000;
    let equipment = [("busiest", "instrument_00"), ("quiet", "instrument_39")];
    let sessions = [
        ("script", script(7)),
        ("admin", "admin_session".to_string()),
    ];
    let kinds = [
        ("lock_acquired", EventKind::LockAcquired),
        ("lock_force_released", EventKind::LockForceReleased),
    ];
    let sinces = [
        ("last 7 days", newest - 7 * day),
        ("last hour", newest - 3_600_000),
    ];
    let untils = [
        ("before the last 30 days", newest - 30 * day),
        ("before 1 h after start", START + 3_600_000),
    ];
    let cursors = [("first page", None), ("from the middle", Some(last / 2))];
    println!("\n| filters | slowest variant | ms (median of 5) | events |\n|---|---|---|---|");
    let mut worst_overall = 0.0f64;
    for mask in 0..32u32 {
        let mut worst = (0.0f64, String::new(), 0usize);
        for variant in 0..32u32 {
            // Each filter present takes its value by one bit of `variant`.
            let bit = |n: u32| (variant >> n & 1) as usize;
            if (0..5).any(|n| mask & (1 << n) == 0 && bit(n) == 1) {
                continue;
            }
            for (cursor_name, after) in cursors {
                let query = EventQuery {
                    equipment_id: (mask & 1 != 0)
                        .then(|| EquipmentId::parse(equipment[bit(0)].1).unwrap()),
                    session_id: (mask & 2 != 0)
                        .then(|| SessionId::parse(&sessions[bit(1)].1).unwrap()),
                    kind: (mask & 4 != 0).then_some(kinds[bit(2)].1),
                    since: (mask & 8 != 0).then(|| Timestamp::from_millis(sinces[bit(3)].1)),
                    until: (mask & 16 != 0).then(|| Timestamp::from_millis(untils[bit(4)].1)),
                    after,
                    limit: 100,
                };
                let mut times = Vec::new();
                let mut found = 0;
                for _ in 0..5 {
                    let q = query.clone();
                    let started = Instant::now();
                    found = store
                        .query(move |tx| tx.query_events(&q))
                        .await
                        .unwrap()
                        .len();
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
                times.sort_by(f64::total_cmp);
                let median = times[2];
                if median >= worst.0 {
                    let mut name = Vec::new();
                    for (n, values) in [
                        equipment.map(|v| v.0),
                        sessions.each_ref().map(|v| v.0),
                        kinds.map(|v| v.0),
                        sinces.map(|v| v.0),
                        untils.map(|v| v.0),
                    ]
                    .iter()
                    .enumerate()
                    {
                        if mask & (1 << n) != 0 {
                            name.push(values[bit(n as u32)]);
                        }
                    }
                    name.push(cursor_name);
                    worst = (median, name.join(", "), found);
                }
            }
        }
        let filters: Vec<&str> = ["equipment_id", "session_id", "event", "since", "until"]
            .iter()
            .enumerate()
            .filter(|(n, _)| mask & (1 << n) != 0)
            .map(|(_, f)| *f)
            .collect();
        let filters = if filters.is_empty() {
            "(none)".to_string()
        } else {
            filters.join(" + ")
        };
        println!("| {filters} | {} | {:.2} | {} |", worst.1, worst.0, worst.2);
        worst_overall = worst_overall.max(worst.0);
    }
    println!("\nslowest of all: {worst_overall:.2} ms");
}
