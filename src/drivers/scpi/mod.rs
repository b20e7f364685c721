//! The `scpi-tcp` driver: LAN instruments that speak SCPI over a raw TCP
//! socket (usually port 5025). It connects lazily, identifies the
//! instrument with `*IDN?`, runs each action's profile steps, and drops the
//! connection after any failure so the next command reconnects.
//!
//! Errors are attributed to the action that caused them: each action starts
//! with `*CLS` (emptying the instrument's error queue of older errors) and
//! ends by asking `SYST:ERR?`. A query answered by an empty line got no
//! reply: that is an error, never an empty result.
//!
//! Bytes are framed and parsed by `codec` (pure); this module only moves
//! them. Every exchange has a deadline, so a hung instrument costs its own
//! callers at most `timeout_ms` and nobody else anything.

pub mod codec;
pub mod profile;
pub mod sim;
pub mod template;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Access, ActionSpec, Driver, DriverError, MAY_HAVE_APPLIED, Params, TimedOut};
use codec::{CodecError, Reply, interpret, is_error_entry, is_no_error};
use profile::{Profile, Step, insert_at};

pub const DRIVER: &str = "scpi-tcp";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScpiConfig {
    /// `host:port` of the instrument.
    pub address: String,
    /// How long one action may take, in milliseconds (default 2000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A built-in profile (`psu`, `scope`, `load`) or a profile file.
    pub profile: String,
}

fn default_timeout_ms() -> u64 {
    2000
}

/// An open connection and what is buffered from it.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// False once a reply showed that questions and answers no longer pair
    /// up (a raw write that was a query, a command answered twice): the
    /// connection is dropped rather than read one answer late for ever.
    in_step: bool,
}

impl Connection {
    /// Forgets whatever the instrument sent that nobody asked for and that
    /// has already arrived (a second answer to a compound query), so this
    /// action's questions get this action's answers.
    fn discard_unasked(&mut self) -> Result<(), DriverError> {
        self.buffer.clear();
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => {
                    return Err(DriverError::Unavailable(
                        "the instrument closed the connection".into(),
                    ));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(lost(e)),
            }
        }
    }

    async fn send(&mut self, command: &str) -> Result<(), DriverError> {
        let mut line = command.as_bytes().to_vec();
        line.push(b'\n');
        self.stream.write_all(&line).await.map_err(lost)
    }

    async fn reply(&mut self) -> Result<Reply, DriverError> {
        loop {
            match codec::decode(&self.buffer).map_err(garbled)? {
                Some((reply, used)) => {
                    self.buffer.drain(..used);
                    return Ok(reply);
                }
                None => {
                    let mut chunk = [0u8; 8192];
                    let n = self.stream.read(&mut chunk).await.map_err(lost)?;
                    if n == 0 {
                        return Err(DriverError::Unavailable(
                            "the instrument closed the connection".into(),
                        ));
                    }
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    async fn query(&mut self, command: &str) -> Result<Reply, DriverError> {
        self.send(command).await?;
        self.reply().await
    }

    /// The instrument's oldest queued error, if any. An answer that is not
    /// an error entry (`<code>,"<text>"`) belongs to an earlier question:
    /// the exchange is out of step.
    async fn error_queue(&mut self) -> Result<Option<String>, DriverError> {
        let answer = self.query("SYST:ERR?").await?;
        match &answer {
            Reply::Line(text) if is_error_entry(text) && is_no_error(text) => Ok(None),
            Reply::Line(text) if is_error_entry(text) => Ok(Some(text.clone())),
            _ => {
                self.in_step = false;
                let got = match answer {
                    Reply::Line(text) => quoted(&text),
                    Reply::Block(_) => "a block".into(),
                };
                Err(DriverError::Instrument(format!(
                    "the instrument's answers are out of step (SYST:ERR? was answered {got}: an earlier command answered more than was asked, such as a query sent with scpi_write; use scpi_query for queries); reconnecting"
                )))
            }
        }
    }
}

/// `text` as a JSON string, for error texts (never Rust's debug quoting).
fn quoted(text: &str) -> String {
    Value::from(text).to_string()
}

fn lost(e: std::io::Error) -> DriverError {
    DriverError::Unavailable(format!("connection lost: {e}"))
}

fn garbled(e: CodecError) -> DriverError {
    DriverError::Instrument(format!("unreadable reply: {e}"))
}

pub struct ScpiTcp {
    config: ScpiConfig,
    profile: Profile,
    actions: Vec<ActionSpec>,
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// Whether `connection` holds an open connection; readable while a
    /// command holds the connection, so the status never waits for it.
    connected: AtomicBool,
    /// What `*IDN?` answered on the last connection.
    identity: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

impl ScpiTcp {
    /// Builds the driver; `base` is where relative profile paths are found.
    pub fn new(config: ScpiConfig, base: &Path) -> Result<Self, String> {
        if !config.address.contains(':') {
            return Err(format!("address {:?} must be host:port", config.address));
        }
        if config.timeout_ms == 0 || config.timeout_ms > 600_000 {
            return Err("timeout_ms must be between 1 and 600000".into());
        }
        let profile = Profile::load(&config.profile, base)?;
        let actions = profile.actions.iter().map(|a| a.spec.clone()).collect();
        Ok(Self {
            config,
            profile,
            actions,
            connection: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
            identity: Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Connection, DriverError> {
        let stream = TcpStream::connect(&self.config.address)
            .await
            .map_err(|e| {
                DriverError::Unavailable(format!("cannot connect to {}: {e}", self.config.address))
            })?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            stream,
            buffer: Vec::new(),
            in_step: true,
        };
        let identity = match connection.query("*IDN?").await? {
            Reply::Line(text) => codec::parse_string(&text),
            Reply::Block(_) => {
                return Err(garbled(CodecError::NotText(
                    "*IDN? answered a block".into(),
                )));
            }
        };
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity);
        Ok(connection)
    }

    /// Runs an action's steps; `sent` is set once the first of them is on
    /// its way to the instrument.
    async fn run_steps(
        &self,
        connection: &mut Connection,
        steps: &[Step],
        params: &Params,
        sent: &AtomicBool,
    ) -> Result<Value, DriverError> {
        connection.discard_unasked()?;
        let check = self.profile.check_errors;
        if check {
            // Errors already queued belong to earlier actions (or to someone
            // at the front panel): clear them, so what `SYST:ERR?` says
            // afterwards is this action's.
            connection.send("*CLS").await?;
        }
        let mut result = Map::new();
        for step in steps {
            sent.store(true, Ordering::Relaxed);
            match step {
                Step::Write(template) => connection.send(&template.render(params)).await?,
                Step::Query {
                    command,
                    reply,
                    key,
                } => {
                    let command = command.render(params);
                    let answer = connection.query(&command).await?;
                    let value = match &answer {
                        Reply::Line(text) if text.trim().is_empty() => Err(format!(
                            "no reply to {} (the instrument answered an empty line)",
                            quoted(&command)
                        )),
                        _ => interpret(&answer, *reply).map_err(|e| e.to_string()),
                    };
                    match value {
                        Ok(value) => insert_at(&mut result, key, value),
                        // An instrument that cannot answer usually says why
                        // in its error queue; prefer its words.
                        Err(e) => {
                            let reason = if check {
                                connection.error_queue().await?
                            } else {
                                None
                            };
                            return Err(DriverError::Instrument(reason.unwrap_or(e)));
                        }
                    }
                }
            }
        }
        // Queries can fail too (an unknown header answered with nothing
        // useful), so every action ends with the question, not only writes.
        if check && let Some(error) = connection.error_queue().await? {
            return Err(DriverError::Instrument(error));
        }
        if result.is_empty() {
            result.insert("ok".into(), json!(true));
        }
        Ok(Value::Object(result))
    }
}

#[async_trait]
impl Driver for ScpiTcp {
    fn driver_name(&self) -> &'static str {
        DRIVER
    }

    fn model(&self) -> String {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| format!("not yet identified ({})", self.config.address))
    }

    fn actions(&self) -> &[ActionSpec] {
        &self.actions
    }

    async fn execute(&self, action: &ActionSpec, params: &Params) -> Result<Value, DriverError> {
        let steps = &self
            .profile
            .action(&action.name)
            .ok_or_else(|| DriverError::Rejected(format!("unknown action {}", action.name)))?
            .steps;
        let mut slot = self.connection.lock().await;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let sent = AtomicBool::new(false);
        let outcome = tokio::time::timeout(timeout, async {
            if slot.is_none() {
                *slot = Some(self.connect().await?);
                self.connected.store(true, Ordering::Relaxed);
                // Connected again: whatever went wrong before is over.
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            let connection = slot.as_mut().expect("just connected");
            self.run_steps(connection, steps, params, &sent).await
        })
        .await
        .unwrap_or(Err(DriverError::Timeout(TimedOut {
            ms: self.config.timeout_ms,
            may_have_applied: false,
        })));
        // A client whose change failed midway must know it may have
        // happened anyway (reads change nothing).
        let may_have_applied = action.access == Access::Control && sent.load(Ordering::Relaxed);
        let outcome = outcome.map_err(|e| match e {
            DriverError::Timeout(t) => DriverError::Timeout(TimedOut {
                may_have_applied,
                ..t
            }),
            DriverError::Unavailable(why) if may_have_applied => {
                DriverError::Unavailable(format!("{why}; {MAY_HAVE_APPLIED}"))
            }
            other => other,
        });
        if let Err(e) = &outcome {
            // After a timeout or a broken exchange the connection may hold a
            // late reply; start clean next time. An instrument error leaves
            // the connection in step, so it is kept (unless it showed the
            // answers no longer pair with the questions).
            let in_step = slot.as_ref().is_some_and(|c| c.in_step);
            if !matches!(e, DriverError::Instrument(_)) || !in_step {
                *slot = None;
                self.connected.store(false, Ordering::Relaxed);
            }
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        outcome
    }

    async fn state(&self) -> Value {
        // Never waits for the instrument: the status page must stay quick
        // even when the instrument hangs.
        json!({
            "address": self.config.address,
            "profile": self.profile.name,
            "identity": *self.identity.lock().unwrap_or_else(|p| p.into_inner()),
            "connected": self.connected.load(Ordering::Relaxed),
            "busy": self.connection.try_lock().is_err(),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}
