//! `lablink sim`: a simulated instrument served over TCP, speaking the SCPI
//! command set of the built-in profiles and backed by the same instrument
//! models as the `sim-*` drivers. Lets the whole path (server, SCPI driver,
//! TCP, instrument) be tested without hardware.
//!
//! Like a real instrument it keeps an error queue (`SYST:ERR?`, emptied by
//! `*CLS`), answers `*IDN?`, and ignores nothing silently: an unknown
//! command queues `-113,"Undefined header"`; a failed query answers an
//! empty line (where a real instrument would answer nothing, so the
//! driver's timeout does not slow every test). It logs under
//! `lablink::sim`, naming itself `<kind>@<address>`.

use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::codec::{ReplyKind, encode_f32_block};
use super::template::Template;
use crate::drivers::sim::{InstrumentModel, LOG_TARGET, load::Load, psu::Psu, scope::Scope};
use crate::drivers::{ActionSpec, DriverError, ParamKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SimKind {
    Psu,
    Scope,
    Load,
}

impl std::fmt::Display for SimKind {
    /// As it is written on the command line (`psu`, `scope`, `load`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Psu => "psu",
            Self::Scope => "scope",
            Self::Load => "load",
        })
    }
}

/// The part of an instrument model the simulator needs, object-safe.
trait Instrument: Send {
    fn model_name(&self) -> String;
    fn actions(&self) -> Vec<ActionSpec>;
    fn run(&mut self, action: &str, params: &Value) -> Result<Value, DriverError>;
}

struct Model<M>(M);

impl<M: InstrumentModel> Instrument for Model<M> {
    fn model_name(&self) -> String {
        self.0.model_name()
    }
    fn actions(&self) -> Vec<ActionSpec> {
        M::actions()
    }
    fn run(&mut self, action: &str, params: &Value) -> Result<Value, DriverError> {
        self.0.run_json(action, params)
    }
}

/// One SCPI command the simulator understands: its template, the model
/// action it runs, and for a query, where the answer is in the result (a
/// JSON pointer; `{ch0}` is the captured channel minus one) and its format.
struct Command {
    template: &'static str,
    action: &'static str,
    reply: Option<(&'static str, ReplyKind)>,
}

const fn write(template: &'static str, action: &'static str) -> Command {
    Command {
        template,
        action,
        reply: None,
    }
}

const fn query(
    template: &'static str,
    action: &'static str,
    pointer: &'static str,
    kind: ReplyKind,
) -> Command {
    Command {
        template,
        action,
        reply: Some((pointer, kind)),
    }
}

use ReplyKind::{BlockF32, Boolean, Number, String as Text};

const PSU: &[Command] = &[
    write("SOUR{channel}:VOLT {voltage}", "set_voltage"),
    write("SOUR{channel}:CURR {current}", "set_current"),
    write("OUTP{channel} {enabled}", "set_output"),
    write("*RST", "reset"),
    query("MEAS{channel}:VOLT?", "get_voltage", "/voltage", Number),
    query("MEAS{channel}:CURR?", "get_current", "/current", Number),
    query(
        "SOUR{channel}:VOLT?",
        "get_status",
        "/channels/{ch0}/voltage_set",
        Number,
    ),
    query(
        "SOUR{channel}:CURR?",
        "get_status",
        "/channels/{ch0}/current_limit",
        Number,
    ),
    query(
        "OUTP{channel}?",
        "get_status",
        "/channels/{ch0}/output",
        Boolean,
    ),
];

const SCOPE: &[Command] = &[
    write("TIM:SCAL {seconds_per_div}", "set_timebase"),
    write("CHAN{channel}:SCAL {volts_per_div}", "set_scale"),
    write("TRIG:EDGE CHAN{channel},{level}", "set_trigger"),
    write("CHAN{channel}:DISP {enabled}", "set_channel"),
    write("SING", "trigger_single"),
    write("RUN", "trigger_run"),
    write("STOP", "trigger_stop"),
    write("AUT", "autoscale"),
    write("*RST", "reset"),
    query(
        "WAV:XOR? CHAN{channel}",
        "get_waveform",
        "/x_origin",
        Number,
    ),
    query(
        "WAV:XINC? CHAN{channel}",
        "get_waveform",
        "/x_increment",
        Number,
    ),
    query(
        "WAV:DATA? CHAN{channel}",
        "get_waveform",
        "/samples",
        BlockF32,
    ),
    query(
        "MEAS:{kind}? CHAN{channel}",
        "get_measurement",
        "/value",
        Number,
    ),
    query("TIM:SCAL?", "get_status", "/seconds_per_div", Number),
    query("TRIG:LEV?", "get_status", "/trigger/level", Number),
    query(
        "CHAN{channel}:DISP?",
        "get_status",
        "/channels/{ch0}/enabled",
        Boolean,
    ),
    query(
        "CHAN{channel}:SCAL?",
        "get_status",
        "/channels/{ch0}/volts_per_div",
        Number,
    ),
];

const LOAD: &[Command] = &[
    write("INP {enabled}", "set_input"),
    write("FUNC {mode}", "set_mode"),
    write("CURR {current}", "set_current"),
    write("VOLT {voltage}", "set_voltage"),
    write("RES {resistance}", "set_resistance"),
    write("POW {power}", "set_power"),
    write("*RST", "reset"),
    query("MEAS:VOLT?", "get_measurement", "/voltage", Number),
    query("MEAS:CURR?", "get_measurement", "/current", Number),
    query("MEAS:POW?", "get_measurement", "/power", Number),
    query("INP?", "get_measurement", "/input", Boolean),
    query("FUNC?", "get_measurement", "/mode", Text),
];

/// A simulated instrument: its model, command set and error queue.
pub struct SimInstrument {
    /// How the log names it (`psu@127.0.0.1:5025`).
    name: String,
    model: Box<dyn Instrument>,
    commands: &'static [Command],
    templates: Vec<Template>,
    errors: VecDeque<String>,
}

/// What the instrument sends back for one command.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Nothing,
    Line(String),
    Bytes(Vec<u8>),
}

impl SimInstrument {
    pub fn new(kind: SimKind) -> Self {
        const DEFAULTS: &str = "the default settings are possible";
        let (model, commands): (Box<dyn Instrument>, &'static [Command]) = match kind {
            SimKind::Psu => (
                Box::new(Model(Psu::from_config(Default::default()).expect(DEFAULTS))),
                PSU,
            ),
            SimKind::Scope => (
                Box::new(Model(
                    Scope::from_config(Default::default()).expect(DEFAULTS),
                )),
                SCOPE,
            ),
            SimKind::Load => (
                Box::new(Model(
                    Load::from_config(Default::default()).expect(DEFAULTS),
                )),
                LOAD,
            ),
        };
        let templates = commands
            .iter()
            .map(|c| Template::parse(c.template).expect("built-in templates are valid"))
            .collect();
        Self {
            name: kind.to_string(),
            model,
            commands,
            templates,
            errors: VecDeque::new(),
        }
    }

    /// The same instrument, named `name` in the log.
    pub fn named(self, name: String) -> Self {
        Self { name, ..self }
    }

    /// Queues an error for `command`, as `SYST:ERR?` will report it.
    fn error(&mut self, command: &str, code: i32, text: &str) {
        if self.errors.len() == 32 {
            self.errors.pop_front();
        }
        let error = format!("{code},\"{}\"", text.replace('"', "'"));
        tracing::info!(target: LOG_TARGET, instrument = %self.name, command, %error, "command refused");
        self.errors.push_back(error);
    }

    /// Handles one command line (without its terminator).
    pub fn handle(&mut self, line: &str) -> Answer {
        let command = line.trim();
        if command.is_empty() {
            return Answer::Nothing;
        }
        let is_query = command.contains('?');
        match command.to_ascii_uppercase().as_str() {
            "*IDN?" => {
                return Answer::Line(format!("LabLink,{},SIM0001,1.0", self.model.model_name()));
            }
            "SYST:ERR?" | "SYSTEM:ERROR?" => {
                return Answer::Line(
                    self.errors
                        .pop_front()
                        .unwrap_or_else(|| "0,\"No error\"".into()),
                );
            }
            "*CLS" => {
                self.errors.clear();
                return Answer::Nothing;
            }
            "*OPC?" => return Answer::Line("1".into()),
            _ => {}
        }
        let found = self
            .templates
            .iter()
            .zip(self.commands)
            .find_map(|(t, c)| t.matches(command).map(|captures| (c, captures)));
        tracing::debug!(target: LOG_TARGET, instrument = %self.name, command, "command");
        let Some((spec, captures)) = found else {
            self.error(command, -113, "Undefined header");
            return if is_query {
                Answer::Line(String::new())
            } else {
                Answer::Nothing
            };
        };
        let failed = |sim: &mut Self, code, text: &str| {
            sim.error(command, code, text);
            if spec.reply.is_some() {
                Answer::Line(String::new())
            } else {
                Answer::Nothing
            }
        };
        let action = self
            .model
            .actions()
            .into_iter()
            .find(|a| a.name == spec.action);
        let Some(action) = action else {
            return failed(self, -113, "Undefined header");
        };
        let params = match to_params(&action, &captures) {
            Ok(p) => p,
            Err(e) => return failed(self, -224, &e),
        };
        let result = match self.model.run(spec.action, &params) {
            Ok(result) => result,
            Err(DriverError::InvalidParameter(e)) => {
                return failed(self, -222, &format!("Data out of range; {e}"));
            }
            Err(e) => return failed(self, -221, &format!("Settings conflict; {e}")),
        };
        let Some((pointer, kind)) = spec.reply else {
            return Answer::Nothing;
        };
        let channel: i64 = captures
            .get("channel")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let pointer = pointer.replace("{ch0}", &(channel - 1).to_string());
        match (result.pointer(&pointer), kind) {
            (Some(Value::Array(values)), ReplyKind::BlockF32) => {
                let values: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
                Answer::Bytes(encode_f32_block(&values))
            }
            (Some(Value::Bool(b)), _) => Answer::Line(if *b { "1" } else { "0" }.into()),
            (Some(Value::String(s)), _) => Answer::Line(s.clone()),
            (Some(v), _) => Answer::Line(v.to_string()),
            (None, _) => failed(self, -200, "Execution error"),
        }
    }
}

/// Turns captured text into JSON parameters of `action`'s declared types
/// (captures the action does not declare, like a channel used only to pick
/// a reading, are left out).
fn to_params(action: &ActionSpec, captures: &BTreeMap<String, String>) -> Result<Value, String> {
    let mut params = serde_json::Map::new();
    for spec in &action.params {
        let Some(raw) = captures.get(&spec.name) else {
            continue;
        };
        let value = match &spec.kind {
            ParamKind::Number { .. } => raw
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| json!(v)),
            ParamKind::Integer { .. } => raw.parse::<i64>().ok().map(|v| json!(v)),
            ParamKind::Boolean => match raw.to_ascii_uppercase().as_str() {
                "ON" | "1" => Some(json!(true)),
                "OFF" | "0" => Some(json!(false)),
                _ => None,
            },
            ParamKind::Choice { values } => values
                .iter()
                .find(|v| v.eq_ignore_ascii_case(raw))
                .map(|v| json!(v)),
            ParamKind::Text { .. } => Some(json!(raw)),
        };
        let value =
            value.ok_or_else(|| format!("Illegal parameter value; {} = {raw}", spec.name))?;
        params.insert(spec.name.clone(), value);
    }
    Ok(Value::Object(params))
}

async fn serve_connection(
    stream: TcpStream,
    instrument: Arc<Mutex<SimInstrument>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        // Several commands may share a line, separated by ';'.
        for command in line.split(';') {
            let answer = instrument
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handle(command);
            match answer {
                Answer::Nothing => {}
                Answer::Line(text) => write.write_all(format!("{text}\n").as_bytes()).await?,
                Answer::Bytes(mut bytes) => {
                    bytes.push(b'\n');
                    write.write_all(&bytes).await?;
                }
            }
        }
    }
    Ok(())
}

/// Serves the instrument on `listener` until `shutdown` completes. Every
/// connection talks to the same instrument.
pub async fn serve(
    listener: TcpListener,
    kind: SimKind,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let name = format!("{kind}@{}", listener.local_addr()?);
    tracing::info!(target: LOG_TARGET, instrument = %name, "simulated instrument listening");
    let instrument = Arc::new(Mutex::new(SimInstrument::new(kind).named(name.clone())));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                tracing::info!(target: LOG_TARGET, instrument = %name, %peer, "connection opened");
                let (instrument, name) = (instrument.clone(), name.clone());
                tokio::spawn(async move {
                    match serve_connection(stream, instrument).await {
                        Ok(()) => tracing::info!(target: LOG_TARGET, instrument = %name, %peer, "connection closed"),
                        Err(e) => tracing::info!(target: LOG_TARGET, instrument = %name, %peer, error = %e, "connection lost"),
                    }
                });
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(answer: Answer) -> String {
        match answer {
            Answer::Line(s) => s,
            other => panic!("expected a line, got {other:?}"),
        }
    }

    #[test]
    fn the_psu_speaks_scpi_and_queues_errors() {
        let mut psu = SimInstrument::new(SimKind::Psu);
        assert!(line(psu.handle("*IDN?")).starts_with("LabLink,LabLink SimPSU"));
        assert_eq!(psu.handle("SOUR1:VOLT 5"), Answer::Nothing);
        assert_eq!(psu.handle("sour1:curr 0.2"), Answer::Nothing);
        assert_eq!(psu.handle("OUTP1 ON"), Answer::Nothing);
        assert_eq!(line(psu.handle("MEAS1:VOLT?")), "2.0");
        assert_eq!(line(psu.handle("SOUR1:VOLT?")), "5.0");
        assert_eq!(line(psu.handle("OUTP1?")), "1");
        assert_eq!(line(psu.handle("SYST:ERR?")), "0,\"No error\"");
        psu.handle("SOUR3:VOLT 6");
        assert!(line(psu.handle("SYST:ERR?")).starts_with("-222,"));
        psu.handle("FOO 1");
        assert_eq!(
            line(psu.handle("MEAS9:VOLT?")),
            "",
            "a failed query answers empty"
        );
        assert_eq!(line(psu.handle("SYST:ERR?")), "-113,\"Undefined header\"");
        assert!(
            line(psu.handle("SYST:ERR?")).starts_with("-222,"),
            "channel 9 is out of range"
        );
    }

    #[test]
    fn cls_empties_the_error_queue() {
        let mut psu = SimInstrument::new(SimKind::Psu);
        psu.handle("FOO 1");
        psu.handle("SOUR3:VOLT 6");
        assert_eq!(psu.handle("*CLS"), Answer::Nothing, "*CLS has no reply");
        assert_eq!(line(psu.handle("SYST:ERR?")), "0,\"No error\"");
        psu.handle("BAR?");
        assert_eq!(psu.handle(" *cls "), Answer::Nothing);
        assert_eq!(line(psu.handle("SYST:ERR?")), "0,\"No error\"");
        // Settings survive it: only the error queue is cleared.
        psu.handle("SOUR1:VOLT 4");
        psu.handle("*CLS");
        assert_eq!(line(psu.handle("SOUR1:VOLT?")), "4.0");
    }

    #[test]
    fn the_scope_sends_waveforms_as_blocks() {
        let mut scope = SimInstrument::new(SimKind::Scope);
        let Answer::Bytes(block) = scope.handle("WAV:DATA? CHAN1") else {
            panic!()
        };
        assert!(block.starts_with(b"#44000"), "1000 f32 samples");
        assert_eq!(
            line(scope.handle("MEAS:VPP? CHAN1"))
                .parse::<f64>()
                .map(|v| (v - 2.0).abs() < 0.05),
            Ok(true)
        );
        assert_eq!(
            line(scope.handle("WAV:DATA? CHAN4")),
            "",
            "channel 4 is off"
        );
        assert!(line(scope.handle("SYST:ERR?")).starts_with("-221,"));
    }
}
