#!/usr/bin/env bash
# Measures a scenario against the HTTP floor in the same run and prints
# LabLink's share of it (the machine is shared and noisy: only ratios
# measured together mean much).
#   bench/floor.sh STORE SCENARIO [CLIENTS] [SECONDS]
#   STORE: memory | sqlite | sqlite-normal; SCENARIO: cycle | status
#   OTHER_BIN=path/to/another/lablink also measures that build (same store,
#   same run), e.g. an older commit built elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-memory}; scenario=${2:-cycle}; clients=${3:-32}; seconds=${4:-10}
source bench/lib.sh
cargo build --release --quiet --manifest-path ../shared/tools/http-floor/Cargo.toml \
  --target-dir target/http-floor
cargo build --release --quiet
data=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$data"' EXIT

rps() { # URL: requests/s of the scenario against it
  "$load" --url "$1" --scenario "$scenario" --clients "$clients" --seconds "$seconds" \
    --json 2>/dev/null | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["requests_per_second"]))'
}

measure() { # NAME BINARY: starts it on a fresh store, prints its share of the floor
  local url=memory
  case "$store" in
    sqlite) url="sqlite://$data/$1.db" ;;
    sqlite-normal) url="sqlite://$data/$1.db?synchronous=normal" ;;
  esac
  local port=$((20000 + RANDOM % 20000))
  RUST_LOG=warn "$2" serve --bind "127.0.0.1:$port" --config bench/lab.toml --store "$url" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/api/equipment/list" >/dev/null && break
    sleep 0.1
  done
  local got
  got=$(rps "http://127.0.0.1:$port")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1 $store $scenario: $got req/s = $(python3 -c "print(round($got / $floor, 2))") of the floor"
}

floor_port=$((20000 + RANDOM % 20000))
target/http-floor/release/http-floor "$floor_port" >/dev/null 2>&1 &
pids+=($!)
sleep 0.3
floor=$(rps "http://127.0.0.1:$floor_port")
kill "${pids[0]}"
echo "floor $scenario: $floor req/s"
measure lablink "$bin"
if [ -n "${OTHER_BIN:-}" ]; then measure other "$OTHER_BIN"; fi
