//! The `lablink` command line (clap): `lablink serve` and its flags.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::config::{self, Flags};
use crate::server::{self, Server};

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
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [env: LABLINK_BIND] [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// TOML file with [server] settings and [[equipment]] entries [env: LABLINK_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store URL [env: LABLINK_STORE] [default: memory]
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> i32 {
    let flags = Flags {
        bind: args.bind,
        config: args.config,
        store: args.store,
    };
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let started = async {
        let settings = config::load(flags, &dir)?;
        Server::build(settings, Arc::new(SystemClock)).await
    };
    let server = match started.await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("lablink: cannot start: {e}");
            return 2;
        }
    };
    match server.run(server::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("server failed: {e}");
            1
        }
    }
}
