//! `lablink-bench`: a load generator that drives a running LabLink (or the
//! HTTP floor) with concurrent keep-alive clients and reports throughput and
//! latency. Its own crate, apart from the server: it speaks only HTTP and
//! JSON to it, so it needs none of the server's code or dependencies.

mod load;
mod soak;

use clap::Parser;
use load::{BenchConfig, Scenario};

/// Drive a running server with concurrent clients and report throughput
/// and latency.
#[derive(Debug, Parser)]
#[command(name = "lablink-bench", version)]
struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    #[arg(long, value_enum, default_value = "cycle")]
    scenario: Scenario,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Skip this many of the server's instruments (to run two scenarios at
    /// once on different instruments).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Soak: WebSocket subscribers beside the clients.
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    /// Soak: seconds per report line.
    #[arg(long, default_value_t = 30.0)]
    interval: f64,
    /// Soak: the server's process id, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Soak: the server's SQLite file, to report its size and its WAL's.
    #[arg(long)]
    db: Option<std::path::PathBuf>,
}

// One thread for the whole load: no hand-offs between threads per request,
// so the tool takes less of the CPU it shares with the server.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    std::process::exit(run(Args::parse()).await);
}

/// Runs the load; returns the process exit code.
async fn run(args: Args) -> i32 {
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0)
        || args.clients == 0
        || args.clients > 10_000
    {
        eprintln!("lablink-bench: --seconds must be in (0, 86400] and --clients in 1..=10000");
        return 2;
    }
    if args.scenario == Scenario::Soak {
        if !(args.interval > 0.0 && args.interval <= args.seconds) {
            eprintln!("lablink-bench: --interval must be in (0, --seconds]");
            return 2;
        }
        let config = soak::SoakConfig {
            url: args.url,
            clients: args.clients,
            subscribers: args.subscribers,
            duration: std::time::Duration::from_secs_f64(args.seconds),
            interval: std::time::Duration::from_secs_f64(args.interval),
            server_pid: args.server_pid,
            db: args.db,
        };
        return match soak::run(config).await {
            Ok(slices) => {
                let errors: u64 = slices.iter().map(|s| s.errors).sum();
                if args.json {
                    println!("{}", serde_json::to_string(&slices).unwrap_or_default());
                }
                println!("soak: {} slices, {errors} errors", slices.len());
                0
            }
            Err(e) => {
                eprintln!("lablink-bench: {e}");
                1
            }
        };
    }
    let config = BenchConfig {
        url: args.url,
        scenario: args.scenario,
        clients: args.clients,
        duration: std::time::Duration::from_secs_f64(args.seconds),
        offset: args.offset,
    };
    match load::run(config).await {
        Ok(report) if args.json => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            0
        }
        Ok(report) => {
            println!("{report}");
            0
        }
        Err(e) => {
            eprintln!("lablink-bench: {e}");
            1
        }
    }
}
