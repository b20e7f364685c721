//! What the use cases record for the metrics, read back exactly with a
//! debugging recorder and the manual clock: how long each waiter waited
//! for its grant, and how late the hand-off after an expired lease came.

use std::sync::Arc;
use std::time::Duration;

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use super::{AcquireInput, NewSession, Policy, Service};
use crate::clock::ManualClock;
use crate::domain::{Actor, EquipmentId, LockMode, SessionId, Timeout, Timestamp};
use crate::drivers::Instruments;
use crate::measure;
use crate::storage::memory::MemoryStore;

async fn session(service: &Service) -> SessionId {
    let new = NewSession {
        actor: Actor::anyone(),
        client_name: None,
        client_ip: None,
        timeout: Some(Timeout::NONE),
        metadata: Default::default(),
    };
    service.create_session(new).await.unwrap().value.id
}

async fn queue_for(service: &Service, equipment: &EquipmentId, session: &SessionId) {
    service
        .acquire(
            equipment.clone(),
            AcquireInput {
                actor: Actor::anyone(),
                session_id: session.clone(),
                mode: LockMode::Exclusive,
                timeout: Some(Timeout::from_millis(5_000)),
                queue_if_busy: true,
                client: Default::default(),
                priority: 0,
                max_wait: Timeout::NONE,
                claim_within: None,
            },
        )
        .await
        .unwrap();
}

/// One histogram's key and values, as a snapshot holds them.
type Recorded = (CompositeKey, Option<Unit>, Option<SharedString>, DebugValue);

/// Every value recorded in the histogram `name` with `labels`, in order.
fn recorded(snapshot: &[Recorded], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(values) => {
                values.iter().map(|v| v.into_inner()).collect::<Vec<f64>>()
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

#[test]
fn a_grant_from_the_queue_records_the_wait_and_one_after_an_expiry_its_lateness() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
            let instruments =
                Instruments::from_configs(&Instruments::demo_configs(), std::path::Path::new("."))
                    .unwrap();
            let service = Service::new(
                Arc::new(MemoryStore::new()),
                Arc::new(clock.clone()),
                Arc::new(instruments),
                Policy::default(),
            );
            let psu = EquipmentId::parse("ps_abc123").unwrap();
            let (a, b, c) = (
                session(&service).await,
                session(&service).await,
                session(&service).await,
            );
            // a holds for 5 s; b joins the queue 1 s in.
            queue_for(&service, &psu, &a).await;
            clock.advance(Duration::from_millis(1_000));
            queue_for(&service, &psu, &b).await;
            // The expiry is made 200 ms after a's deadline: b waited 4.2 s.
            clock.advance(Duration::from_millis(4_200));
            service.expire_due().await.unwrap();
            // c joins at once; b leaves 2 s later: c waited 2 s, and a
            // release is no expiry, so no lateness.
            queue_for(&service, &psu, &c).await;
            clock.advance(Duration::from_millis(2_000));
            service
                .release(&psu, &b, false, &Actor::anyone())
                .await
                .unwrap();
        });
    });
    // A snapshot drains the histograms: one for every check.
    let snapshot = recorder.snapshotter().snapshot().into_vec();
    let wait = [("equipment_id", "ps_abc123"), ("mode", "exclusive")];
    assert_eq!(recorded(&snapshot, measure::LOCK_WAIT, &wait), [4.2, 2.0]);
    assert_eq!(recorded(&snapshot, measure::HANDOFF_LATENESS, &[]), [0.2]);
    let writes = recorded(&snapshot, measure::STORE_TRANSACTION, &[("kind", "write")]);
    assert_eq!(
        writes.len(),
        8,
        "3 sessions, 3 acquires, 1 expiry, 1 release"
    );
}
