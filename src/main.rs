//! The `lablink` binary: parse the command line and run it (each
//! command sets up its own logging: `serve` from its settings).

use clap::Parser;

/// mimalloc rather than the system allocator: a request allocates many small
/// buffers on two threads, and glibc's malloc/free showed as 15% of the
/// server's CPU in the `cycle` profile (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = lablink::cli::Cli::parse();
    std::process::exit(lablink::cli::main(cli).await);
}
