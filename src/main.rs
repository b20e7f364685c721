//! The `lablink` binary: parse the command line, set up logging, run.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = lablink::cli::Cli::parse();
    lablink::telemetry::init();
    std::process::exit(lablink::cli::main(cli).await);
}
