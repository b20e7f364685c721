//! `lablink run --lock EQ -- CMD ARGS...`: runs a program while holding
//! locks, as `flock` or `consul lock` do. It opens a session, waits its
//! turn for the lock, or for a whole lock group or pool at once (one
//! long-polled acquire; the queue positions, per instrument, come from
//! live events, shown on stderr as they change), keeps the session and the
//! locks alive in the background while the program runs (before each
//! deadline, and at once on `lock_expiring`), then releases and ends the
//! session and exits with the program's status.
//!
//! A lost lock (`lock_lost`, or a renewal the server refuses) stops the
//! program: SIGTERM, then SIGKILL after the grace period. Ctrl-C or SIGTERM
//! to `run` is passed on to the program the same way. However it ends, the
//! locks are released, the queue places left and the session ended.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

use super::http::{Acquired, Api, Lock, Pool, Queueing, Target};
use super::live::{LiveEvents, Subscription};
use super::output::{duration, errln};
use super::{ClientError, Connection, exit, fail, vars};
use crate::server::Signals;

pub struct RunOptions {
    /// Equipment to lock, or configured lock groups' ids. One instrument
    /// is a single lock; several (or a group, or with a pool) are one lock
    /// group, granted all at once.
    pub locks: Vec<String>,
    /// A pool: any one free instrument that fits, taken with the others.
    pub any_of: Option<Pool>,
    pub observer: bool,
    /// How long to wait for the locks; `None`: as long as it takes.
    pub wait: Option<Duration>,
    /// Priority, the server-side wait limit and the claim window of each
    /// request.
    pub queueing: Queueing,
    /// The session's and the locks' lease: how long they outlive a `run`
    /// that dies without cleaning up. Renewed well before it ends.
    pub lease: Duration,
    /// Between SIGTERM and SIGKILL when the program must stop.
    pub grace: Duration,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// How soon a renewal that could not reach the server is tried again: a
/// twentieth of the lease, at most 250 ms (at least 20 ms), so a server
/// back from a restart is renewed with at once, not a third of a lease on.
fn retry_period(lease: Duration) -> Duration {
    (lease / 20).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

/// The longest single long-poll (the server allows 3600 s); a shorter one
/// only means another request now and then.
const MAX_POLL: Duration = Duration::from_secs(300);

/// Why `run` stopped before the program exited on its own.
enum Stop {
    LockLost {
        equipment: String,
        reason: String,
    },
    WaitRanOut {
        equipment: String,
        why: String,
    },
    /// The server dropped the queue place: `--max-wait` passed.
    QueueTimeout {
        equipment: String,
    },
    /// A lab manager took the queue place (or ended the session).
    PlaceRemoved {
        equipment: String,
        why: String,
    },
    /// In maintenance, and not queued: `--wait 0`, or a server whose
    /// queue is disabled (`queued` says which).
    InMaintenance {
        equipment: String,
        detail: String,
        queued: bool,
    },
    Interrupted(&'static str),
    Failed(ClientError),
    CannotStart(std::io::Error),
}

/// What a live message asks of `run`.
enum Heard {
    Nothing,
    Position {
        equipment: String,
        position: usize,
    },
    RenewNow,
    Lost(Stop),
    /// Something to tell the user (maintenance announced on a held lock).
    Say(String),
    Reconnect,
}

pub async fn run(conn: &Connection, options: RunOptions) -> i32 {
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(e) => {
            errln!("lablink run: cannot listen for signals: {e}");
            return exit::ERROR;
        }
    };
    let api = match Api::new(conn) {
        Ok(api) => api,
        Err(e) => return fail("run", &e),
    };
    let target = match target_of(&api, &options).await {
        Ok(target) => target,
        Err(e) => return fail("run", &e),
    };
    let label = label_of(&options);
    let program = options.command.join(" ");
    let metadata = json!({"command": program.chars().take(1000).collect::<String>()});
    let client_name = format!("lablink run {}", options.command[0]);
    let session = match api
        .create_session(&client_name, options.lease, metadata)
        .await
    {
        Ok(session) => session,
        Err(e) => return fail("run", &e),
    };
    let mut keeper = Keeper::new(&api, session, &options).await;
    let (outcome, started) = match keeper
        .acquire(&target, &label, &options, &mut signals)
        .await
    {
        Ok(()) => (keeper.supervise(conn, &options, &mut signals).await, true),
        Err(stop) => (Err(stop), false),
    };
    let command_was = if started { "stopped" } else { "not started" };
    keeper.clean_up().await;
    match outcome {
        Ok(status) => exit_status(status),
        Err(Stop::LockLost { equipment, reason }) => {
            errln!(
                "lablink run: lost the lock on {equipment}: {reason}; the command was {command_was}"
            );
            exit::LOCK_LOST
        }
        Err(Stop::WaitRanOut { equipment, why }) => {
            errln!("lablink run: gave up waiting for {equipment}: {why}; nothing was left behind");
            exit::WAIT_RAN_OUT
        }
        Err(Stop::QueueTimeout { equipment }) => {
            let max_wait = duration(options.queueing.max_wait.unwrap_or_default().as_secs_f64());
            errln!(
                "lablink run: gave up waiting for {equipment}: --max-wait {max_wait} ran out and the server dropped the place; nothing was left behind"
            );
            exit::QUEUE_TIMEOUT
        }
        Err(Stop::PlaceRemoved { equipment, why }) => {
            errln!(
                "lablink run: lost the place in the queue for {equipment}: {why}; the command was not started"
            );
            exit::PLACE_REMOVED
        }
        Err(Stop::InMaintenance {
            equipment,
            detail,
            queued,
        }) => {
            let is = if equipment.contains(", ") {
                "are"
            } else {
                "is"
            };
            // Asked to queue, only a server that does not queue refuses.
            let why = if queued {
                "the server does not queue (its queue is disabled)"
            } else {
                "--wait is 0"
            };
            errln!(
                "lablink run: {equipment} {is} in maintenance and {why} ({detail}); the command was not started"
            );
            exit::IN_MAINTENANCE
        }
        Err(Stop::Interrupted(name)) => {
            errln!("lablink run: {name}: the command was {command_was}; the locks are released");
            Signal::from_str(name).map_or(exit::ERROR, |s| exit::signalled(s as i32))
        }
        Err(Stop::Failed(e)) => fail("run", &e),
        Err(Stop::CannotStart(e)) => {
            errln!("lablink run: cannot run {:?}: {e}", options.command[0]);
            match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            }
        }
    }
}

/// The program's status as a shell reports it: its code, or 128 + the
/// signal that killed it.
fn exit_status(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(exit::signalled))
        .unwrap_or(exit::ERROR)
}

/// The session, the locks it holds, and what keeps them alive.
struct Keeper<'a> {
    api: &'a Api,
    session: String,
    lease: Duration,
    /// The locks held, sorted by instrument (a group's every member).
    held: Vec<Lock>,
    /// The lock group (or pool request) asked for, once the server named it.
    group_id: Option<String>,
    /// Instruments asked for (held or queued), to release at the end.
    asked: Vec<String>,
    /// When the last renewal the server accepted was sent (the lease runs
    /// from no earlier than that).
    renewed_at: Instant,
    renew: tokio::time::Interval,
    /// How soon a renewal that could not reach the server is tried again.
    retry: Duration,
    live: Option<LiveEvents>,
}

impl<'a> Keeper<'a> {
    async fn new(api: &'a Api, session: String, options: &RunOptions) -> Self {
        // Three renewals per lease: one lost request still leaves two.
        let period = if options.lease.is_zero() {
            Duration::from_secs(3600)
        } else {
            (options.lease / 3).max(Duration::from_millis(50))
        };
        let mut renew = tokio::time::interval_at(Instant::now() + period, period);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut keeper = Self {
            api,
            session,
            lease: options.lease,
            held: Vec::new(),
            group_id: None,
            asked: Vec::new(),
            renewed_at: Instant::now(),
            renew,
            retry: retry_period(options.lease),
            live: None,
        };
        // Subscribed before the first acquire, so no position is missed.
        if let Err(e) = keeper.connect_live().await {
            errln!(
                "lablink run: live events unavailable ({e}); queue positions will not be shown, and a lost lock is noticed at the next renewal"
            );
        }
        keeper
    }

    async fn connect_live(&mut self) -> Result<(), ClientError> {
        let subscription = Subscription {
            session_id: Some(self.session.clone()),
            ..Subscription::default()
        };
        self.live = Some(LiveEvents::connect(self.api, &subscription).await?);
        Ok(())
    }

    /// Takes the lock (or the whole lock group, all at once), waiting in
    /// the queue (every member's) within `--wait`.
    async fn acquire(
        &mut self,
        target: &Target,
        label: &str,
        options: &RunOptions,
        signals: &mut Signals,
    ) -> Result<(), Stop> {
        let deadline = options.wait.map(|w| Instant::now() + w);
        // `--wait 0`: never queue, so a busy instrument leaves no trace.
        let queue = options.wait != Some(Duration::ZERO);
        let api = self.api;
        let session = self.session.clone();
        self.asked = target.equipment_ids.clone();
        self.asked.extend(target.equipment_id.clone());
        // The first answer says why it waits; live events then tell each
        // change of place, per instrument.
        let mut told_busy = false;
        let mut shown: BTreeMap<String, usize> = BTreeMap::new();
        let mut retry_in = Duration::ZERO;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // The first ask answers at once (who holds it, our place); the
            // next ones wait for the turn.
            let poll = if told_busy {
                left.unwrap_or(MAX_POLL).min(MAX_POLL)
            } else {
                Duration::ZERO
            };
            let delay = std::mem::take(&mut retry_in);
            let session = &session;
            let acquire = async move {
                tokio::time::sleep(delay).await;
                api.acquire(
                    target,
                    session,
                    options.observer,
                    options.lease,
                    queue,
                    options.queueing,
                    poll,
                )
                .await
            };
            tokio::pin!(acquire);
            let answer = loop {
                tokio::select! {
                    answer = &mut acquire => break answer,
                    message = next_live(&mut self.live) => match self.heard(message) {
                        Heard::Position { equipment, position } => {
                            // Shown once the first answer said why it waits.
                            if told_busy && self.asked.contains(&equipment) {
                                show_position(&equipment, position, &mut shown);
                            }
                        }
                        other => self.act_on(other).await?,
                    },
                    _ = self.renew.tick() => self.renew_all().await?,
                    name = signals.next() => return Err(Stop::Interrupted(name)),
                    // The time is up whether or not the server has answered
                    // yet (the clean-up leaves the queue).
                    () = until(deadline.filter(|_| queue)) => return Err(wait_ran_out(label, options, &shown)),
                }
            };
            match answer {
                Ok(Acquired::Locked {
                    mut locks,
                    group_id,
                }) => {
                    locks.sort_by(|a, b| a.equipment_id.cmp(&b.equipment_id));
                    if !shown.is_empty() {
                        errln!("lablink run: {label} is ours ({})", lock_list(&locks));
                    }
                    self.asked = locks.iter().map(|l| l.equipment_id.clone()).collect();
                    self.group_id = group_id;
                    // Handed over from the queue with a claim window: claim
                    // it now (the answer itself is no claim). A group's
                    // members are claimed together, by any one of them.
                    if let Some(lock) = locks.iter().find(|l| l.claim_by.is_some()) {
                        api.renew_lock(&lock.equipment_id, session)
                            .await
                            .map_err(|e| Stop::LockLost {
                                equipment: lock.equipment_id.clone(),
                                reason: e.to_string(),
                            })?;
                    }
                    self.held = locks;
                    return Ok(());
                }
                Ok(Acquired::Queued {
                    places,
                    message,
                    group_id,
                }) => {
                    self.group_id = group_id;
                    for (eq, _) in &places {
                        if !self.asked.contains(eq) {
                            self.asked.push(eq.clone());
                        }
                    }
                    if !told_busy {
                        told_busy = true;
                        match places.as_slice() {
                            [(_, position)] => errln!(
                                "lablink run: {label} is busy ({message}); waiting at position {position} in the queue"
                            ),
                            _ => errln!(
                                "lablink run: {} busy ({message}); waiting in every queue at once: {}",
                                self.busy_of(&places, options)
                                    .await
                                    .unwrap_or_else(|| format!("{label} is")),
                                places
                                    .iter()
                                    .map(|(eq, p)| format!("{eq} at position {p}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }
                        shown.extend(places.iter().cloned());
                    }
                    for (eq, position) in places {
                        show_position(&eq, position, &mut shown);
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(wait_ran_out(label, options, &shown));
                    }
                }
                Err(e) if !queue && e.code() == Some("equipment_locked") => {
                    return Err(Stop::WaitRanOut {
                        equipment: label.to_owned(),
                        why: format!("it is busy and --wait is 0 ({})", cli_hint(&e.to_string())),
                    });
                }
                // Busy on a server that does not queue: as busy with
                // `--wait 0` (try again later), whatever `--wait` says.
                Err(e) if e.code() == Some("queue_disabled") => {
                    return Err(Stop::WaitRanOut {
                        equipment: label.to_owned(),
                        why: format!("it is busy and the server does not queue ({e})"),
                    });
                }
                Err(e) if e.code() == Some("in_maintenance") => {
                    let named = self.in_maintenance(options).await;
                    return Err(Stop::InMaintenance {
                        equipment: named.unwrap_or_else(|| label.to_owned()),
                        detail: cli_hint(&e.to_string()),
                        queued: queue,
                    });
                }
                Err(e) if e.code() == Some("queue_timeout") => {
                    return Err(Stop::QueueTimeout {
                        equipment: label.to_owned(),
                    });
                }
                // A waiter whose place was taken is answered `not_queued`
                // (or, its session ended, `session_not_found`): its
                // history says what happened.
                Err(e)
                    if told_busy
                        && matches!(e.code(), Some("not_queued" | "session_not_found")) =>
                {
                    return Err(self.why_place_went().await.unwrap_or(Stop::Failed(e)));
                }
                // A server restarting (or its store failing over): its
                // queue survives, so ask again (`renew_all` gives up once
                // a whole lease has gone by).
                Err(e) if e.is_transient() => retry_in = Duration::from_secs(1),
                Err(e) => return Err(Stop::Failed(e)),
            }
        }
    }

    /// Runs the program with the locks, keeping them alive until it exits;
    /// stops it if a lock is lost or `run` is interrupted.
    async fn supervise(
        &mut self,
        conn: &Connection,
        options: &RunOptions,
        signals: &mut Signals,
    ) -> Result<ExitStatus, Stop> {
        let list = |f: fn(&Lock) -> String| self.held.iter().map(f).collect::<Vec<_>>().join(" ");
        let mut command = tokio::process::Command::new(&options.command[0]);
        command
            .args(&options.command[1..])
            .env(vars::URL, &conn.url)
            .env(vars::SESSION_ID, &self.session)
            .env("LABLINK_EQUIPMENT_ID", list(|l| l.equipment_id.clone()))
            .env("LABLINK_LOCK_ID", list(|l| l.lock_id.clone()))
            .env(
                "LABLINK_FENCING_TOKEN",
                list(|l| l.fencing_token.to_string()),
            )
            // Should `run` stop before waiting on it (a panic), the
            // program does not go on unlocked.
            .kill_on_drop(true);
        if let Some(group_id) = &self.group_id {
            command
                .env("LABLINK_GROUP_ID", group_id)
                .env("LABLINK_EQUIPMENT_IDS", list(|l| l.equipment_id.clone()));
            for lock in &self.held {
                let name = var_suffix(&lock.equipment_id);
                command
                    .env(format!("LABLINK_LOCK_ID_{name}"), &lock.lock_id)
                    .env(
                        format!("LABLINK_FENCING_TOKEN_{name}"),
                        lock.fencing_token.to_string(),
                    );
            }
        }
        if let Some(token) = &conn.token {
            command.env(vars::TOKEN, token);
        }
        let mut child = command.spawn().map_err(Stop::CannotStart)?;
        let stop = loop {
            tokio::select! {
                status = child.wait() => {
                    return status.map_err(|e| Stop::Failed(ClientError::Unexpected(
                        format!("cannot wait for the command: {e}"))));
                }
                message = next_live(&mut self.live) => {
                    let heard = self.heard(message);
                    if let Err(stop) = self.act_on(heard).await {
                        break stop;
                    }
                }
                _ = self.renew.tick() => {
                    if let Err(stop) = self.renew_all().await {
                        break stop;
                    }
                }
                name = signals.next() => break Stop::Interrupted(name),
            }
        };
        // Passed on as it came, except a Ctrl-C at the terminal, which the
        // command got itself (a second SIGINT would break into its own
        // clean-up, e.g. Python's `finally`); a lost lock is SIGTERM.
        let signal = match &stop {
            Stop::Interrupted("SIGINT") if terminal_sent_sigint() => None,
            Stop::Interrupted(name) => Some(Signal::from_str(name).unwrap_or(Signal::SIGTERM)),
            _ => Some(Signal::SIGTERM),
        };
        if let Stop::LockLost { equipment, reason } = &stop {
            errln!(
                "lablink run: lost the lock on {equipment} ({reason}): sending SIGTERM to the command (SIGKILL in {})",
                duration(options.grace.as_secs_f64())
            );
        }
        terminate(&mut child, signal, options.grace).await;
        Err(stop)
    }

    /// How a lost lock's instrument is named: with its lock group, whose
    /// every member goes with it.
    fn member(&self, equipment: &str) -> String {
        match &self.group_id {
            Some(group) => format!("{equipment} (lock group {group})"),
            None => equipment.to_owned(),
        }
    }

    /// What a live message means for this session.
    fn heard(&self, message: Option<Result<Value, ClientError>>) -> Heard {
        let Some(Ok(message)) = message else {
            return Heard::Reconnect;
        };
        if message["type"] == "lagged" {
            return Heard::Reconnect;
        }
        if message["session_id"] != self.session.as_str() {
            return Heard::Nothing;
        }
        let equipment = message["equipment_id"].as_str().unwrap_or_default();
        let ours = self.held.iter().any(|l| l.equipment_id == equipment);
        let waiting = !ours && self.asked.iter().any(|eq| eq == equipment);
        match message["event"].as_str() {
            Some("queue_place_lost") if waiting => Heard::Lost(place_lost(equipment, &message)),
            Some("maintenance_started") if ours => Heard::Say(format!(
                "{equipment} is going into maintenance ({}{}); the lock is kept until the command ends",
                message["message"].as_str().unwrap_or("no reason given"),
                message["expires_at"]
                    .as_str()
                    .map(|until| format!(", until {until}"))
                    .unwrap_or_default()
            )),
            Some("queue_position") => Heard::Position {
                equipment: equipment.to_owned(),
                position: message["position"].as_u64().unwrap_or(0) as usize,
            },
            Some("lock_expiring") if ours => Heard::RenewNow,
            Some("lock_lost") if ours => Heard::Lost(Stop::LockLost {
                equipment: self.member(equipment),
                reason: lost_reason(&message),
            }),
            _ => Heard::Nothing,
        }
    }

    async fn act_on(&mut self, heard: Heard) -> Result<(), Stop> {
        match heard {
            Heard::Nothing | Heard::Position { .. } => Ok(()),
            Heard::RenewNow => self.renew_all().await,
            Heard::Lost(stop) => Err(stop),
            Heard::Say(text) => {
                errln!("lablink run: {text}");
                Ok(())
            }
            Heard::Reconnect => {
                // Renewals go on without it; the next tick tries again.
                self.live = None;
                Ok(())
            }
        }
    }

    /// Renews every held lock (which renews the session), or the session
    /// alone while none is held yet. A renewal the server refuses means the
    /// lock is gone; a server out of reach for a whole lease means it may be.
    /// While it is out of reach (a restart), the renewal is tried again
    /// every `retry` rather than at the next third of the lease, so the
    /// first renewal after it is back arrives within `retry`: an outage is
    /// survived whenever it is shorter than what was left of the lease
    /// when it began (at least two thirds of it), less `retry`.
    async fn renew_all(&mut self) -> Result<(), Stop> {
        let sent = Instant::now();
        let mut unreachable = None;
        if self.held.is_empty() {
            match self.api.renew_session(&self.session).await {
                Ok(()) => self.renewed_at = sent,
                Err(e) if e.is_transient() => unreachable = Some(e),
                Err(e) => return Err(Stop::Failed(e)),
            }
        }
        // A group's lease is one: renewing any member renews them all (a
        // member lost is heard as `lock_lost`, or refuses this renewal).
        let renewed = if self.group_id.is_some() {
            &self.held[..self.held.len().min(1)]
        } else {
            &self.held[..]
        };
        for lock in renewed {
            match self.api.renew_lock(&lock.equipment_id, &self.session).await {
                Ok(()) => self.renewed_at = sent,
                Err(e) if e.is_transient() => unreachable = Some(e),
                Err(e) => {
                    return Err(Stop::LockLost {
                        equipment: self.member(&lock.equipment_id),
                        reason: e.to_string(),
                    });
                }
            }
        }
        match unreachable {
            Some(e) if !self.lease.is_zero() && self.renewed_at.elapsed() >= self.lease => {
                Err(match self.held.first() {
                    Some(lock) => Stop::LockLost {
                        equipment: self.member(&lock.equipment_id),
                        reason: format!(
                            "no renewal reached the server for a whole lease ({}), so the lock may have expired: {e}",
                            duration(self.lease.as_secs_f64())
                        ),
                    },
                    None => Stop::Failed(e),
                })
            }
            Some(_) => {
                self.renew.reset_after(self.retry);
                Ok(())
            }
            None => {
                // After the renewals, not before: the lease comes first.
                if self.live.is_none() {
                    let _ = self.connect_live().await;
                }
                Ok(())
            }
        }
    }

    /// Which of the instruments asked for are in maintenance, from the
    /// server's list (`psu1` when only it is, `psu1, scope1` when both
    /// are); `None` if that cannot be told. Asked for means named by
    /// `--lock`, a member of a configured group named by `--lock`, or fit
    /// for the `--any-of` pool.
    async fn in_maintenance(&self, options: &RunOptions) -> Option<String> {
        let list = self.api.get(&["api", "equipment", "list"]).await.ok()?;
        let out_of_service = self
            .api
            .get(&["api", "equipment", "maintenance"])
            .await
            .ok()?;
        let out_of_service = out_of_service["maintenance"].as_object()?;
        let groups = list["groups"].as_array().cloned().unwrap_or_default();
        let in_asked_group = |id: &str| {
            groups.iter().any(|g| {
                options.locks.iter().any(|l| g["group_id"] == l.as_str())
                    && g["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m == id))
            })
        };
        let in_pool = |e: &Value, id: &str| match &options.any_of {
            Some(Pool::Ids(ids)) => ids.iter().any(|i| i == id),
            Some(Pool::Tags(tags)) => tags.iter().all(|t| {
                e["tags"]
                    .as_array()
                    .is_some_and(|have| have.iter().any(|h| h == t.as_str()))
            }),
            None => false,
        };
        let named: Vec<&str> = list["equipment"]
            .as_array()?
            .iter()
            .filter_map(|e| Some((e, e["equipment_id"].as_str()?)))
            .filter(|(e, id)| {
                options.locks.iter().any(|l| l == id) || in_asked_group(id) || in_pool(e, id)
            })
            .map(|(_, id)| id)
            .filter(|id| out_of_service.contains_key(*id))
            .collect();
        (!named.is_empty()).then(|| named.join(", "))
    }

    /// Which of a lock group's `places` stand in its way (held by another
    /// session, in maintenance, or with others ahead in line), as `psu1
    /// is`/`psu1, load1 are`: the server's answer names the holders but
    /// not which members are free. `None` if that cannot be told (or is
    /// nobody any more: it was freed meanwhile).
    async fn busy_of(&self, places: &[(String, usize)], options: &RunOptions) -> Option<String> {
        let all = self.api.get(&["api", "locks", "all"]).await.ok()?;
        let maintenance = self
            .api
            .get(&["api", "equipment", "maintenance"])
            .await
            .ok()?;
        let another = |lock: &Value| {
            lock["session_id"]
                .as_str()
                .is_some_and(|s| s != self.session)
        };
        let busy: Vec<&str> = places
            .iter()
            .filter(|(eq, position)| {
                let eq = eq.as_str();
                let observers = all["observer_locks"][eq].as_array();
                *position > 1
                    || another(&all["exclusive_locks"][eq])
                    || (!options.observer && observers.is_some_and(|o| o.iter().any(another)))
                    || !maintenance["maintenance"][eq].is_null()
            })
            .map(|(eq, _)| eq.as_str())
            .collect();
        match busy.as_slice() {
            [] => None,
            [one] => Some(format!("{one} is")),
            many => Some(format!("{} are", many.join(", "))),
        }
    }

    /// Why a waiting request's place went, from the session's history: its
    /// latest event on an instrument it waited for (`None` if it says
    /// nothing of them).
    async fn why_place_went(&self) -> Option<Stop> {
        let history = self
            .api
            .get_query(
                &["api", "locks", "sessions", &self.session, "events"],
                &[("limit", "50".to_owned())],
            )
            .await
            .ok()?;
        let latest = history["events"]
            .as_array()?
            .iter()
            .rev()
            .find(|e| self.asked.iter().any(|eq| e["equipment_id"] == eq.as_str()))?;
        let equipment = latest["equipment_id"].as_str().unwrap_or_default();
        let taken = latest["event"] == "queue_timeout"
            || (latest["event"] == "dequeued"
                && matches!(latest["reason"].as_str(), Some("removed" | "forced")));
        taken.then(|| place_lost(equipment, latest))
    }

    /// Releases what was asked for (locks and queue places) and ends the
    /// session; what cannot be done is said, and ends with its lease.
    async fn clean_up(&mut self) {
        self.live = None;
        // A group goes at once, held or waiting, by its id.
        let released = match &self.group_id {
            Some(group_id) => vec![(
                group_id.clone(),
                self.api.release_group(group_id, &self.session, false).await,
            )],
            None => {
                let mut released = Vec::new();
                for eq in &self.asked {
                    let answer = self.api.release(eq, &self.session, false).await;
                    released.push((eq.clone(), answer));
                }
                released
            }
        };
        for (eq, answer) in released {
            if let Err(e) = answer.as_ref()
                && e.is_transient()
            {
                errln!(
                    "lablink run: could not release {eq} ({e}); it is freed when its lease of {} ends",
                    duration(self.lease.as_secs_f64())
                );
            }
        }
        if let Err(e) = self.api.end_session(&self.session).await
            && e.is_transient()
        {
            errln!("lablink run: could not end session {}: {e}", self.session);
        }
    }
}

/// The next live message, or never while there is no connection.
async fn next_live(live: &mut Option<LiveEvents>) -> Option<Result<Value, ClientError>> {
    match live {
        Some(live) => live.next().await,
        None => std::future::pending().await,
    }
}

fn show_position(eq: &str, position: usize, shown: &mut BTreeMap<String, usize>) {
    if shown.get(eq) != Some(&position) {
        errln!("lablink run: {eq}: position {position} in the queue");
        shown.insert(eq.to_owned(), position);
    }
}

/// What `run` asks the server for. One `--lock` alone is sent as it is
/// (`equipment_id`: an instrument, or a configured group the server
/// expands); several are one lock group, each configured group among them
/// replaced by its members (the server takes one group per request).
async fn target_of(api: &Api, options: &RunOptions) -> Result<Target, ClientError> {
    let mut locks = options.locks.clone();
    locks.sort();
    locks.dedup();
    if locks.len() <= 1 {
        return Ok(Target {
            equipment_id: locks.pop(),
            equipment_ids: Vec::new(),
            any_of: options.any_of.clone(),
        });
    }
    let list = api.get(&["api", "equipment", "list"]).await?;
    let groups = list["groups"].as_array().cloned().unwrap_or_default();
    let mut members: Vec<String> = Vec::new();
    for id in locks {
        match groups.iter().find(|g| g["group_id"] == id.as_str()) {
            Some(group) => members.extend(
                group["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            ),
            None => members.push(id),
        }
    }
    members.sort();
    members.dedup();
    Ok(Target {
        equipment_id: None,
        equipment_ids: members,
        any_of: options.any_of.clone(),
    })
}

/// How messages name what `run` asked for: `ps_abc123`, `bench3`,
/// `psu1, scope1`, `any of tag psu`, `scope1 and any of psu1, psu2`.
fn label_of(options: &RunOptions) -> String {
    let mut locks = options.locks.clone();
    locks.sort();
    locks.dedup();
    let pool = options.any_of.as_ref().map(|pool| match pool {
        Pool::Tags(tags) => format!("any of tag {}", tags.join(" and ")),
        Pool::Ids(ids) => format!("any of {}", ids.join(", ")),
    });
    match (locks.is_empty(), pool) {
        (_, None) => locks.join(", "),
        (true, Some(pool)) => pool,
        (false, Some(pool)) => format!("{} and {pool}", locks.join(", ")),
    }
}

/// The server's detail with its REST hint (`set queue_if_busy to wait
/// ...`) said the way `run` waits: `give --wait DURATION to wait ...`.
fn cli_hint(detail: &str) -> String {
    detail.replace("set queue_if_busy to wait", "give --wait DURATION to wait")
}

/// `psu1: lock lock_psu1_1, fencing token 1; ...`, or for one lock as it
/// always was: `lock lock_psu1_1, fencing token 1`.
fn lock_list(locks: &[Lock]) -> String {
    let one = |l: &Lock| format!("lock {}, fencing token {}", l.lock_id, l.fencing_token);
    match locks {
        [lock] if lock.group_id.is_none() => one(lock),
        _ => locks
            .iter()
            .map(|l| format!("{}: {}", l.equipment_id, one(l)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// An instrument id as the end of an environment variable's name:
/// upper-case, every character but ASCII letters and digits as `_`
/// (`bench3-psu.1` → `BENCH3_PSU_1`).
pub fn var_suffix(equipment: &str) -> String {
    equipment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn wait_ran_out(label: &str, options: &RunOptions, shown: &BTreeMap<String, usize>) -> Stop {
    let waited = duration(options.wait.unwrap_or_default().as_secs_f64());
    let places: Vec<String> = shown.iter().map(|(eq, p)| format!("{eq} {p}")).collect();
    Stop::WaitRanOut {
        equipment: label.to_owned(),
        why: match (shown.len(), shown.values().next()) {
            (0, _) | (_, None) => format!("--wait {waited} ran out"),
            (1, Some(p)) => format!("--wait {waited} ran out at position {p} in the queue"),
            _ => format!(
                "--wait {waited} ran out at positions {} in the queues",
                places.join(", ")
            ),
        },
    }
}

/// ` by WHO` for an intervention: the admin's user, else its `forced_by`.
fn by_whom(note: &Value) -> String {
    note["user"]
        .as_str()
        .or(note["forced_by"].as_str())
        .map(|who| format!(" by {who}"))
        .unwrap_or_default()
}

/// Why a queue place was dropped without our asking, from its
/// `queue_place_lost` notification or its history event.
fn place_lost(equipment: &str, note: &Value) -> Stop {
    if note["reason"] == "wait_timeout" || note["event"] == "queue_timeout" {
        return Stop::QueueTimeout {
            equipment: equipment.to_owned(),
        };
    }
    let by = by_whom(note);
    let what = match note["reason"].as_str() {
        Some("forced") => "the session was ended",
        _ => "it was removed from the queue",
    };
    let message = note["message"]
        .as_str()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Stop::PlaceRemoved {
        equipment: equipment.to_owned(),
        why: format!("{what}{by}{message}"),
    }
}

/// A `lock_lost` notification's reason, in words.
fn lost_reason(note: &Value) -> String {
    let by = by_whom(note);
    let message = note["message"]
        .as_str()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    match note["reason"].as_str() {
        Some("forced") => format!("it was force-released{by}{message}"),
        Some("timeout") => "its lease ran out before a renewal reached the server".into(),
        Some("exclusive_granted") => "an exclusive lock was granted to another session".into(),
        Some("session_expired") => "the session expired".into(),
        Some("claim_expired") => {
            "it was handed over from the queue and not claimed within its claim window".into()
        }
        Some(other) => other.replace('_', " "),
        None => "the server ended it".into(),
    }
}

/// Whether a SIGINT came from Ctrl-C at a terminal, and so reached the
/// command too: `run` is in the terminal's foreground process group, which
/// the command shares. Without a terminal (scripts, `kill -INT`), it did not.
fn terminal_sent_sigint() -> bool {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    nix::unistd::tcgetpgrp(&tty).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

/// Sends `signal` (if any) to the program, then SIGKILL if it is still
/// running after `grace`.
async fn terminate(child: &mut tokio::process::Child, signal: Option<Signal>, grace: Duration) {
    if let (Some(signal), Some(pid)) = (signal, child.id().and_then(|id| i32::try_from(id).ok())) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        errln!(
            "lablink run: the command did not stop within {}: SIGKILL",
            duration(grace.as_secs_f64())
        );
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lock_says_why_in_words() {
        let forced = json!({"event": "lock_lost", "reason": "forced", "forced_by": "admin"});
        assert_eq!(lost_reason(&forced), "it was force-released by admin");
        let by_user = json!({"reason": "forced", "forced_by": "x", "user": "root"});
        assert_eq!(lost_reason(&by_user), "it was force-released by root");
        assert!(lost_reason(&json!({"reason": "timeout"})).contains("lease ran out"));
        assert_eq!(
            lost_reason(&json!({"reason": "session_ended"})),
            "session ended"
        );
    }

    #[test]
    fn the_servers_rest_hints_are_said_the_way_run_waits() {
        assert_eq!(
            cli_hint(
                "equipment psu is busy: locked by session a (alice); set queue_if_busy to wait in line"
            ),
            "equipment psu is busy: locked by session a (alice); give --wait DURATION to wait in line"
        );
        assert_eq!(
            cli_hint(
                "equipment load_1 is in maintenance (calibration): set queue_if_busy to wait until service resumes"
            ),
            "equipment load_1 is in maintenance (calibration): give --wait DURATION to wait until service resumes"
        );
        let other =
            "equipment load_1 is in maintenance (calibration): try again when service resumes";
        assert_eq!(cli_hint(other), other);
    }
}
