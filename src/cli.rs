//! The `lablink` command line (clap): `lablink serve` and its flags, the
//! operator's commands beside it (`token`, `backup`, `sim`), and the client
//! commands (`run`, `status`, ...), whose work is in `crate::client`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth;
use crate::client::output::{errln, outln};
use crate::client::{self, ClientError, Connection, http::Api};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Flags, Settings};
use crate::domain::Role;
use crate::drivers::scpi::sim::SimKind;
use crate::server::{self, Server};
use crate::storage::sqlite::backup as sqlite_backup;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "lablink",
    version,
    about = "Share a lab's instruments without clobbering each other's experiments"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Serve a simulated SCPI instrument over TCP (for the scpi-tcp driver).
    Sim(SimArgs),
    /// Manage API tokens in the configured store (server running or not).
    Token(TokenArgs),
    /// Copy the configured SQLite store to a new file, consistently, while
    /// the server runs (restore: start a server on the copy).
    Backup(BackupArgs),
    /// Run a command while holding locks: wait for the turn, keep the locks
    /// alive while it runs, release them after; exits with its status.
    #[command(after_help = RUN_EXIT_STATUSES)]
    Run(RunArgs),
    /// Who holds what: every instrument, or one in detail with its queue.
    Status(StatusArgs),
    /// Live sessions, with what each holds or waits for.
    Sessions(ReadArgs),
    /// Who waits for an instrument, next in line first.
    Queue(QueueArgs),
    /// Release a lock or leave a queue; --force releases whoever holds it (admins).
    Release(ReleaseArgs),
    /// Run an instrument action, e.g. `lablink command ps_abc123 set_voltage voltage=12`.
    #[command(name = "command")]
    Action(ActionArgs),
    /// The lock history, oldest first; --follow streams new events live.
    Events(EventsArgs),
    /// Take an instrument out of service, or put it back (administrators).
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Remove another session's place in a queue (administrators).
    Dequeue(DequeueArgs),
    /// End another session: its locks released, its queue places gone (administrators).
    EndSession(EndSessionArgs),
    /// Let the waiter right behind go first: trade places with it.
    StepBack(StepBackArgs),
    /// Swap places with another waiter; done once both have asked.
    Swap(SwapArgs),
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The new file to write (never overwritten)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Store URL [env: LABLINK_STORE] [default: sqlite://lablink-data/lablink.db]
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The server's config file, to find its store [env: LABLINK_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

const RUN_EXIT_STATUSES: &str = "Exit status: the command's own (128+N if killed by signal N); \
69 if a lock (any member of a lock group) was lost (the command got SIGTERM, SIGKILL after --grace); \
75 if --wait ran out (nothing left behind); 76 if --max-wait ran out (the server dropped the place); \
77 if a lab manager removed the queue place or ended the session; \
78 if the instrument is in maintenance and not queued (--wait 0, or the server's queue is disabled); 130/143 if interrupted by SIGINT/SIGTERM; \
126/127 if the command cannot be executed/found; 1 if the server refused or cannot be reached.";

/// Where the server is and who is asking: every client command takes these.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The LabLink server's URL
    #[arg(
        long,
        value_name = "URL",
        env = client::vars::URL,
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    /// API token (when the server requires authentication)
    #[arg(
        long,
        value_name = "TOKEN",
        env = client::vars::TOKEN,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl ServerArgs {
    fn connection(self) -> Connection {
        Connection {
            url: self.url,
            // An empty LABLINK_TOKEN is no token.
            token: self.token.filter(|t| !t.is_empty()),
        }
    }
}

/// An instrument (or configured group) id, checked before anything is sent.
fn equipment_arg(text: &str) -> Result<String, String> {
    crate::domain::EquipmentId::parse(text.trim())
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

/// A pool: `tag:psu[,tag:30V]` (every tag) or `psu1,psu2` (any of them).
fn pool_arg(text: &str) -> Result<client::http::Pool, String> {
    let words: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let tags: Vec<String> = words
        .iter()
        .filter_map(|w| w.strip_prefix("tag:"))
        .map(str::to_owned)
        .collect();
    match (words.len(), tags.len()) {
        (0, _) => Err("name the pool: tag:TAG[,tag:TAG] or EQ,EQ".into()),
        (n, 0) => Ok(client::http::Pool::Ids(
            words.into_iter().take(n).map(str::to_owned).collect(),
        )),
        (n, t) if n == t && tags.iter().all(|t| !t.is_empty()) => {
            Ok(client::http::Pool::Tags(tags))
        }
        (n, t) if n == t => Err("a tag cannot be empty: tag:psu".into()),
        _ => Err("a pool is tags (tag:psu,tag:30V) or instruments (psu1,psu2), not both".into()),
    }
}

/// A duration: `90s`, `10m`, `1h` or plain seconds.
fn duration_arg(text: &str) -> Result<Duration, String> {
    client::output::parse_duration(text)
}

/// `run`'s usage, said in errors too: what to lock is one of two flags
/// (or both), and `--url` is not needed (it has a default).
const RUN_USAGE: &str =
    "lablink run [OPTIONS] <--lock EQ[,EQ...] | --any-of POOL | both> -- CMD [ARGS]...";

#[derive(Debug, clap::Args)]
#[command(
    override_usage = RUN_USAGE,
    group(clap::ArgGroup::new("what_to_lock").args(["locks", "any_of"]).required(true).multiple(true))
)]
pub struct RunArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Equipment to lock, or a configured group's id (repeat or comma-separate for several: one lock group, granted all at once)
    #[arg(
        long = "lock",
        value_name = "EQ",
        value_delimiter = ',',
        value_parser = equipment_arg
    )]
    pub locks: Vec<String>,
    /// A pool, taken with the rest: any one free instrument with these tags (tag:psu,tag:30V) or of these ids (psu1,psu2); one per run
    #[arg(long, value_name = "POOL", value_parser = pool_arg, action = clap::ArgAction::Append)]
    pub any_of: Vec<client::http::Pool>,
    /// Take observer locks instead of exclusive ones
    #[arg(long)]
    pub observer: bool,
    /// Give up after waiting this long (90s, 10m, 1h or seconds; 0: do not queue) [default: as long as it takes]
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub wait: Option<Duration>,
    /// Queue priority, -10 to 10 (higher is served first; above 0 needs an admin or the role's cap) [default: 0]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i8).range(-10..=10))]
    pub priority: Option<i8>,
    /// Ask the server to drop the queue place after this long without a grant (it holds even if `run` is killed)
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub max_wait: Option<Duration>,
    /// A lock handed over from the queue must be claimed within this (`run` claims it at once) [default: the server's]
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub claim_within: Option<Duration>,
    /// The lease of the session and the locks, renewed while the command runs: how long they outlive a `run` that is killed
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "60s")]
    pub timeout: Duration,
    /// How long the command has between SIGTERM and SIGKILL when it must stop
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "10s")]
    pub grace: Duration,
    /// The command to run, and its arguments (after `--`)
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// A read command's common flags.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the server's JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One instrument in detail (else all of them)
    pub equipment: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    pub equipment: String,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The instrument, a configured group's id, or several (a lock group by the instruments it was taken with; space- or comma-separated)
    #[arg(
        value_name = "EQ",
        value_delimiter = ',',
        required_unless_present = "group_id"
    )]
    pub equipment: Vec<String>,
    /// A lock group (or pool request) by the `group_id` its acquire answered
    #[arg(long, value_name = "GROUP_ID", conflicts_with = "equipment")]
    pub group_id: Option<String>,
    /// Release whoever holds it (administrators only, with authentication on)
    #[arg(long)]
    pub force: bool,
    /// The session whose lock or queue place to release; with --force, who forces it [default with --force: lablink-cli]
    #[arg(long, value_name = "SESSION", env = client::vars::SESSION_ID)]
    pub session: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    pub equipment: String,
    /// The action's name (a wrong one is answered with the list of valid ones)
    pub action: String,
    /// Parameters as key=value, typed from the action catalog (voltage=12 is a number)
    #[arg(value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,
    /// The session holding the lock (inside `lablink run`: its own)
    #[arg(long, value_name = "SESSION", env = client::vars::SESSION_ID)]
    pub session: Option<String>,
    /// The lock's fencing token [default inside `lablink run`: its lock's]
    #[arg(long, value_name = "N")]
    pub fencing_token: Option<u64>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Out of service: new requests are refused (or queue); the holder keeps its lock.
    Start(MaintenanceStartArgs),
    /// Back in service now; the queue is served.
    End(MaintenanceEndArgs),
}

#[derive(Debug, clap::Args)]
pub struct MaintenanceStartArgs {
    pub equipment: String,
    /// Why it is out of service (shown in its status)
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// When service resumes by itself: RFC 3339, or a duration from now (2h) [default: no end set: until `maintenance end`]
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct MaintenanceEndArgs {
    pub equipment: String,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Who intervenes and why (recorded in the history).
#[derive(Debug, clap::Args)]
pub struct InterventionArgs {
    /// Why (recorded and told to the one it happens to)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Recorded as `forced_by`, as `release --force` is
    #[arg(long, value_name = "NAME", default_value = "lablink-cli")]
    pub forced_by: String,
}

#[derive(Debug, clap::Args)]
pub struct DequeueArgs {
    pub equipment: String,
    /// The waiting session to remove (`lablink queue EQ` lists them)
    pub session: String,
    #[command(flatten)]
    pub by: InterventionArgs,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct EndSessionArgs {
    /// The session to end (`lablink sessions` lists them)
    pub session: String,
    #[command(flatten)]
    pub by: InterventionArgs,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct StepBackArgs {
    pub equipment: String,
    /// The waiting session (yours) [default: LABLINK_SESSION_ID]
    #[arg(long, value_name = "SESSION", env = client::vars::SESSION_ID)]
    pub session: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct SwapArgs {
    pub equipment: String,
    /// The waiter to swap with (it must ask for the same swap)
    #[arg(value_name = "WITH_SESSION")]
    pub with: String,
    /// The waiting session (yours) [default: LABLINK_SESSION_ID]
    #[arg(long, value_name = "SESSION", env = client::vars::SESSION_ID)]
    pub session: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// After the history, stream new events live (until Ctrl-C)
    #[arg(long)]
    pub follow: bool,
    /// Only this equipment's events
    #[arg(long, value_name = "EQ")]
    pub equipment: Option<String>,
    /// Only events naming this session
    #[arg(long, value_name = "SESSION")]
    pub session: Option<String>,
    /// Only events at or after this instant: RFC 3339, or a duration ago (10m, 1h)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    /// Store URL [env: LABLINK_STORE] [default: sqlite://lablink-data/lablink.db]
    #[arg(long, value_name = "URL", global = true)]
    pub store: Option<String>,
    /// The server's config file, to find its store [env: LABLINK_CONFIG]
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user; it is printed once and never again.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens (ids, users, roles; never the tokens themselves).
    List,
    /// Revoke a token by its id (see `token list`).
    Revoke { id: String },
}

/// `--role`: the domain's roles, as the command line spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Everything, including force-releasing others' locks.
    Admin,
    /// Exclusive and observer locks on the equipment they are allowed to use.
    Operator,
    /// Observer locks and observe actions only.
    Observer,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Admin => Role::Admin,
            RoleArg::Operator => Role::Operator,
            RoleArg::Observer => Role::Observer,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:5025")]
    pub listen: String,
    /// Which instrument to simulate.
    #[arg(long, value_enum)]
    pub kind: SimKind,
}

#[derive(Debug, clap::Args)]
#[command(after_help = config::settings_help())]
pub struct ServeArgs {
    /// Address to listen on [env: LABLINK_BIND] [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// TOML file with [server] settings and [[equipment]] entries [env: LABLINK_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store URL [env: LABLINK_STORE] [default: sqlite://lablink-data/lablink.db]
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    // `serve` sets up its logs once it has read its settings (the format
    // is one); the others log little, as text.
    if !matches!(cli.command, Command::Serve(_)) {
        telemetry::init(LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Sim(args) => sim(args).await,
        Command::Token(args) => token(args).await,
        Command::Backup(args) => backup(args),
        Command::Run(args) => run(args).await,
        Command::Status(StatusArgs { equipment, read }) => {
            client_command("status", read.server, async |api| match &equipment {
                Some(eq) => client::reads::status_one(api, eq, read.json).await,
                None => client::reads::status_all(api, read.json).await,
            })
            .await
        }
        Command::Sessions(read) => {
            client_command("sessions", read.server, async |api| {
                client::reads::sessions(api, read.json).await
            })
            .await
        }
        Command::Queue(QueueArgs { equipment, read }) => {
            client_command("queue", read.server, async |api| {
                client::reads::queue(api, &equipment, read.json).await
            })
            .await
        }
        Command::Release(args) => release(args).await,
        Command::Action(args) => action(args).await,
        Command::Events(args) => events(args).await,
        Command::Maintenance(MaintenanceCommand::Start(args)) => {
            let until = match args.until.as_deref().map(client::manage::until_arg) {
                Some(Err(e)) => return client::fail("maintenance start", &e),
                Some(Ok(until)) => Some(until),
                None => None,
            };
            client_command("maintenance start", args.read.server, async |api| {
                client::manage::start_maintenance(
                    api,
                    &args.equipment,
                    &args.reason,
                    until.as_deref(),
                    args.read.json,
                )
                .await
            })
            .await
        }
        Command::Maintenance(MaintenanceCommand::End(args)) => {
            client_command("maintenance end", args.read.server, async |api| {
                client::manage::end_maintenance(api, &args.equipment, args.read.json).await
            })
            .await
        }
        Command::Dequeue(args) => {
            client_command("dequeue", args.read.server, async |api| {
                client::manage::dequeue(
                    api,
                    &args.equipment,
                    &args.session,
                    &args.by.intervention(),
                    args.read.json,
                )
                .await
            })
            .await
        }
        Command::EndSession(args) => {
            client_command("end-session", args.read.server, async |api| {
                client::manage::end_session(
                    api,
                    &args.session,
                    &args.by.intervention(),
                    args.read.json,
                )
                .await
            })
            .await
        }
        Command::StepBack(args) => {
            let Some(session) = args.session else {
                return missing_session("step-back");
            };
            client_command("step-back", args.read.server, async |api| {
                client::manage::step_back(api, &args.equipment, &session, args.read.json).await
            })
            .await
        }
        Command::Swap(args) => {
            let Some(session) = args.session else {
                return missing_session("swap");
            };
            client_command("swap", args.read.server, async |api| {
                client::manage::swap(api, &args.equipment, &session, &args.with, args.read.json)
                    .await
            })
            .await
        }
    }
}

impl InterventionArgs {
    fn intervention(&self) -> serde_json::Value {
        serde_json::json!({"forced_by": self.forced_by, "message": self.reason})
    }
}

/// A trade names the waiting session; without one, says how to.
fn missing_session(name: &str) -> i32 {
    errln!(
        "lablink {name}: name the waiting session (--session or LABLINK_SESSION_ID; `lablink queue EQ` lists them)"
    );
    client::exit::USAGE
}

/// Runs a client command against the server; its exit status.
async fn client_command(
    name: &str,
    server: ServerArgs,
    act: impl AsyncFnOnce(&Api) -> Result<(), ClientError>,
) -> i32 {
    let done = match Api::new(&server.connection()) {
        Ok(api) => act(&api).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => 0,
        Err(e) => client::fail(name, &e),
    }
}

async fn run(mut args: RunArgs) -> i32 {
    // Two pools could mean "one of each" or "one of them all": neither is
    // guessed, as the server takes one pool per request.
    if args.any_of.len() > 1 {
        errln!(
            "lablink run: one --any-of per run: the server takes one pool per request. For any one of them all, write one pool (--any-of psu1,psu2,psu3); for one instrument from each of two pools, name one with --lock or run twice, nested"
        );
        return client::exit::USAGE;
    }
    let options = client::run::RunOptions {
        locks: args.locks,
        any_of: args.any_of.pop(),
        observer: args.observer,
        wait: args.wait,
        queueing: client::http::Queueing {
            priority: args.priority,
            max_wait: args.max_wait,
            claim_within: args.claim_within,
        },
        lease: args.timeout,
        grace: args.grace,
        command: args.command,
    };
    client::run::run(&args.server.connection(), options).await
}

async fn release(args: ReleaseArgs) -> i32 {
    let session = match (args.session, args.force) {
        (Some(session), _) => session,
        // Recorded as `forced_by`; it need not exist.
        (None, true) => "lablink-cli".into(),
        (None, false) => {
            errln!(
                "lablink release: name the session whose lock to release (--session or LABLINK_SESSION_ID), or --force"
            );
            return client::exit::USAGE;
        }
    };
    client_command("release", args.read.server, async |api| {
        let what = client::reads::ReleaseTarget {
            equipment: args.equipment.clone(),
            group_id: args.group_id.clone(),
        };
        client::reads::release(api, &what, &session, args.force, args.read.json).await
    })
    .await
}

async fn action(args: ActionArgs) -> i32 {
    let fencing_token = args.fencing_token.or_else(|| {
        client::reads::fencing_token_from_env(&args.equipment, args.session.as_deref())
    });
    client_command("command", args.read.server, async |api| {
        client::reads::command(
            api,
            &args.equipment,
            &args.action,
            &args.parameters,
            args.session.as_deref(),
            fencing_token,
            args.read.json,
        )
        .await
    })
    .await
}

async fn events(args: EventsArgs) -> i32 {
    // A duration means that long ago.
    let since = args
        .since
        .map(|since| match client::output::parse_duration(&since) {
            Ok(ago) => {
                (chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }
            Err(_) => since,
        });
    let filter = client::events::EventFilter {
        equipment: args.equipment,
        session: args.session,
        since,
    };
    client_command("events", args.read.server, async |api| {
        client::events::events(api, &filter, args.follow, args.read.json).await
    })
    .await
}

/// The settings a command beside `serve` finds its store with: the same
/// flags, environment, `.env` and config file as `serve`.
fn store_settings(store: Option<String>, config: Option<PathBuf>) -> Result<Settings, String> {
    let flags = Flags {
        bind: None,
        config,
        store,
    };
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    config::load(flags, &dir).map_err(|e| e.to_string())
}

fn backup(args: BackupArgs) -> i32 {
    let settings = match store_settings(args.store, args.config) {
        Ok(settings) => settings,
        Err(e) => {
            errln!("lablink backup: {e}");
            return 2;
        }
    };
    let options = match server::sqlite_options(&settings.store, &settings.data_dir) {
        Ok(options) => options,
        Err(e) => {
            errln!("lablink backup: {e}");
            return 2;
        }
    };
    let Some(options) = options else {
        errln!(
            "lablink backup: the store is {:?}, not SQLite: {}",
            settings.store,
            if settings.store.starts_with("memory") {
                "the memory store keeps nothing on disk, so there is nothing to back up"
            } else {
                "back it up with its own tools (pg_dump for PostgreSQL)"
            }
        );
        return 2;
    };
    match sqlite_backup::backup(&options, &args.path) {
        Ok(copied) => {
            outln!(
                "backed up {} to {} ({} bytes, schema version {}, events up to #{}); restore: start a server on the copy (lablink serve --store sqlite://{})",
                options.path.display(),
                copied.to.display(),
                copied.bytes,
                copied.schema_version,
                copied.last_event_seq,
                std::path::absolute(&copied.to)
                    .unwrap_or(copied.to.clone())
                    .display()
            );
            0
        }
        Err(e) => {
            errln!("lablink backup: {e}");
            1
        }
    }
}

async fn token(args: TokenArgs) -> i32 {
    // Only `create` may bring a store into being: listing or revoking in a
    // store that does not exist means the settings point somewhere else.
    let creates = matches!(args.command, TokenCommand::Create { .. });
    // Settings that cannot be read are bad arguments (2); a store that is
    // not there or cannot be opened is "cannot do it" (1).
    let settings = match store_settings(args.store, args.config) {
        Ok(settings) => settings,
        Err(e) => {
            errln!("lablink token: {e}");
            return client::exit::USAGE;
        }
    };
    let store = match server::store_file(&settings.store, &settings.data_dir) {
        Some(file) if !creates && !file.exists() => Err(format!(
            "there is no store at {} (from {}): check --config, --store and LABLINK_DATA_DIR; the server creates it on first start",
            file.display(),
            settings.store
        )),
        _ => server::open_store(&settings.store, &settings.data_dir).map_err(|e| e.to_string()),
    };
    let store = match store {
        Ok(store) => store,
        Err(e) => {
            errln!("lablink token: {e}");
            return client::exit::ERROR;
        }
    };
    let now = SystemClock.now();
    let done = match args.command {
        TokenCommand::Create { user, role } => {
            auth::create_token(store.as_ref(), &user, role.into(), now)
                .await
                .map(|(token, record)| {
                    errln!(
                        "created {} for {} ({}) in {}; this is the only time the token is shown:",
                        record.id,
                        record.user,
                        record.role,
                        store.describe()
                    );
                    outln!("{token}");
                })
        }
        TokenCommand::List => auth::list_tokens(store.as_ref()).await.map(|tokens| {
            outln!(
                "{:<18} {:<24} {:<9} {:<25} revoked",
                "id",
                "user",
                "role",
                "created"
            );
            for t in tokens {
                let revoked = t
                    .revoked_at
                    .map(|r| r.to_rfc3339())
                    .unwrap_or_else(|| "-".into());
                outln!(
                    "{:<18} {:<24} {:<9} {:<25} {revoked}",
                    t.id,
                    t.user,
                    t.role.as_str(),
                    t.created_at.to_rfc3339()
                );
            }
        }),
        TokenCommand::Revoke { id } => {
            auth::revoke_token(store.as_ref(), &id, now)
                .await
                .map(|()| {
                    outln!("revoked {id}; running servers stop accepting it within a second");
                })
        }
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            errln!("lablink token: {e}");
            1
        }
    }
}

async fn sim(args: SimArgs) -> i32 {
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lablink sim: cannot listen on {}: {e}", args.listen);
            return 2;
        }
    };
    match listener.local_addr() {
        Ok(addr) => outln!("simulated {} listening on {addr}", args.kind),
        Err(e) => eprintln!("lablink sim: {e}"),
    }
    let mut signals = match server::Signals::listen() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("lablink sim: cannot listen for signals: {e}");
            return 2;
        }
    };
    let stop = async move {
        signals.next().await;
    };
    match crate::drivers::scpi::sim::serve(listener, args.kind, stop).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lablink sim: {e}");
            1
        }
    }
}

async fn serve(args: ServeArgs) -> i32 {
    let flags = Flags {
        bind: args.bind,
        config: args.config,
        store: args.store,
    };
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut signals = match server::Signals::listen() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("lablink: cannot start: cannot listen for signals: {e}");
            return 2;
        }
    };
    let started = async {
        let settings = config::load(flags, &dir)?;
        telemetry::init(settings.log_format);
        Server::build(settings, Arc::new(SystemClock)).await
    };
    // A fatal error is printed once, plainly, whatever the log filter.
    let server = match started.await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("lablink: cannot start: {e}");
            return 2;
        }
    };
    let (first_signal, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!("{name}: shutting down");
        let _ = first_signal.send(());
        // Someone who asks twice does not want to wait for the grace period.
        let name = signals.next().await;
        eprintln!("lablink: second signal ({name}): exiting now");
        std::process::exit(130);
    });
    match server
        .run(async {
            let _ = stop.await;
        })
        .await
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lablink: the server failed: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// `--role` takes exactly the domain's role names, each meaning its role.
    #[test]
    fn role_args_are_the_domain_roles() {
        // No wildcard: a new domain role does not compile without its arg.
        let arg_of = |role: Role| match role {
            Role::Admin => RoleArg::Admin,
            Role::Operator => RoleArg::Operator,
            Role::Observer => RoleArg::Observer,
        };
        for arg in RoleArg::value_variants() {
            let name = arg.to_possible_value().unwrap();
            assert_eq!(Role::parse(name.get_name()), Some(Role::from(*arg)));
            assert_eq!(arg_of(Role::from(*arg)), *arg);
        }
    }
}
