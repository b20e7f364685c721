#!/usr/bin/env bash
# Several servers on one PostgreSQL, measured side by side with SQLite and
# the HTTP floor in the same run (the machine is shared and noisy: only
# figures measured together compare).
#   LABLINK_BENCH_POSTGRES=postgres://USER@HOST:PORT/postgres \
#     bench/replicas.sh [SCENARIO] [CLIENTS] [SECONDS]
# LABLINK_BENCH_POSTGRES names an existing database whose user may create
# databases: each PostgreSQL run gets a fresh one (dropped at the end).
# Prints requests/s for: the floor; one server on SQLite; one server on
# PostgreSQL; two servers on one PostgreSQL with the clients split between
# them (their sum). A cycle is two requests (acquire, release).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-cycle}; clients=${2:-32}; seconds=${3:-10}
admin=${LABLINK_BENCH_POSTGRES:?set LABLINK_BENCH_POSTGRES to a PostgreSQL URL (see the header)}
source bench/lib.sh
cargo build --release --quiet
cargo build --release --quiet --manifest-path ../shared/tools/http-floor/Cargo.toml \
  --target-dir target/http-floor
data=$(mktemp -d)
pids=()
databases=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for db in "${databases[@]}"; do
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$data"
}
trap cleanup EXIT

rps() { # URL CLIENTS OFFSET: requests/s of the scenario
  "$load" --url "$1" --scenario "$scenario" --clients "$2" --offset "$3" --seconds "$seconds" \
    --json 2>/dev/null | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["requests_per_second"]))'
}

serve() { # STORE_URL: starts a server, prints its URL
  local port=$((20000 + RANDOM % 20000))
  RUST_LOG=warn "$bin" serve --bind "127.0.0.1:$port" --config bench/lab.toml --store "$1" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/api/equipment/list" >/dev/null && break
    sleep 0.1
  done
  echo "http://127.0.0.1:$port"
}

fresh_database() {
  local db="lablink_bench_$$_$RANDOM"
  psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
  databases+=("$db")
  echo "${admin%/*}/$db"
}

stop_servers() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
}

floor_port=$((20000 + RANDOM % 20000))
target/http-floor/release/http-floor "$floor_port" >/dev/null 2>&1 &
pids+=($!)
sleep 0.3
floor=$(rps "http://127.0.0.1:$floor_port" "$clients" 0)
stop_servers

sqlite=$(rps "$(serve "sqlite://$data/lablink.db")" "$clients" 0)
stop_servers

one=$(rps "$(serve "$(fresh_database)")" "$clients" 0)
stop_servers

db=$(fresh_database)
a=$(serve "$db"); b=$(serve "$db")
half=$((clients / 2))
rps "$a" "$half" 0 > "$data/a" &
rps "$b" "$((clients - half))" "$half" > "$data/b"
wait %1 2>/dev/null || true
two=$(( $(cat "$data/a") + $(cat "$data/b") ))
stop_servers

share() { python3 -c "print(round($1 / $2, 2))"; }
echo "$scenario, $clients clients, ${seconds}s each:"
echo "  HTTP floor                      $floor req/s"
echo "  SQLite, one server              $sqlite req/s = $(share "$sqlite" "$floor") of the floor"
echo "  PostgreSQL, one server          $one req/s = $(share "$one" "$floor") of the floor"
echo "  PostgreSQL, two servers (sum)   $two req/s = $(share "$two" "$floor") of the floor, $(share "$two" "$one") of one server"
