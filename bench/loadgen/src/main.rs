//! `lablink-bench`: a load generator that drives a running LabLink (or the
//! HTTP floor) with concurrent keep-alive clients and reports throughput and
//! latency. Its own crate, apart from the server: it speaks only HTTP and
//! JSON to it, so it needs none of the server's code or dependencies.

mod load;

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
