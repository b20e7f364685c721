# Shared by the bench scripts: build the release binaries and start a server.
#   $bin is the server, $load the load generator (bench/loadgen); a plain
#   `cargo build --release` builds both (the workspace's default members).
#   start_server STORE_URL   sets $port and $server, and waits until the
#                            server answers; stopping it is the caller's.
bin=target/release/lablink
load=target/release/lablink-bench
server=""
start_server() {
  cargo build --release --quiet
  port=$((20000 + RANDOM % 20000))
  # BENCH_RUST_LOG: the server's log filter (default warn; `info` adds a
  # line per request and per lock event); BENCH_SERVER_LOG: a file for the
  # server's log (default: this terminal).
  RUST_LOG=${BENCH_RUST_LOG:-warn} "$bin" serve --bind "127.0.0.1:$port" --config bench/lab.toml --store "$1" 2>"${BENCH_SERVER_LOG:-/dev/stderr}" &
  server=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/api/equipment/list" >/dev/null && return 0
    sleep 0.1
  done
  echo "the server did not start" >&2
  return 1
}
