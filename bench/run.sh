#!/usr/bin/env bash
# Starts a release LabLink on a fresh store with one instrument per client
# (bench/lab.toml, 64 instruments), runs one `lablink-bench` scenario
# against it, and stops it.
#   bench/run.sh STORE SCENARIO [CLIENTS] [SECONDS] [BACKGROUND_SCENARIO]
#   STORE: memory | sqlite | sqlite-normal
#   BACKGROUND_SCENARIO: another scenario run at the same time with 32
#   clients on instruments 0-31 (the measured one then uses 32 onwards),
#   e.g. `bench/run.sh memory expiry 16 10 cycle`.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-memory}; scenario=${2:-cycle}; clients=${3:-32}; seconds=${4:-10}
background=${5:-}
source bench/lib.sh
data=$(mktemp -d)
case "$store" in
  memory) url=memory ;;
  sqlite) url="sqlite://$data/lablink.db" ;;
  sqlite-normal) url="sqlite://$data/lablink.db?synchronous=normal" ;;
  *) echo "unknown store $store" >&2; exit 2 ;;
esac
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
start_server "$url"
offset=0
if [ -n "$background" ]; then
  "$load" --url "http://127.0.0.1:$port" --scenario "$background" --clients 32 \
    --seconds "$seconds" | sed 's/^/background: /' &
  offset=32
fi
"$load" --url "http://127.0.0.1:$port" --scenario "$scenario" \
  --clients "$clients" --seconds "$seconds" --offset "$offset"
wait %2 2>/dev/null || true
