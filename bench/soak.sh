#!/usr/bin/env bash
# The soak: a release LabLink on a fresh store (bench/lab.toml, 64
# instruments) under `lablink-bench --scenario soak` (32 mixed clients,
# 200 WebSocket subscribers, session churn, leases expiring) for SECONDS,
# with history retention set, printing a line per INTERVAL seconds:
# latency, errors, the server's RSS, the SQLite files' sizes.
#   bench/soak.sh STORE [SECONDS] [INTERVAL] [MAX_EVENTS]
#   STORE: memory | sqlite | sqlite-normal; MAX_EVENTS (default 1000000)
#   is LABLINK_EVENT_RETENTION_MAX_EVENTS.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite}; seconds=${2:-600}; interval=${3:-30}; max_events=${4:-1000000}
source bench/lib.sh
data=$(mktemp -d)
db=""
case "$store" in
  memory) url=memory ;;
  sqlite) url="sqlite://$data/lablink.db"; db="$data/lablink.db" ;;
  sqlite-normal) url="sqlite://$data/lablink.db?synchronous=normal"; db="$data/lablink.db" ;;
  *) echo "unknown store $store" >&2; exit 2 ;;
esac
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
export LABLINK_EVENT_RETENTION_MAX_EVENTS=$max_events
start_server "$url"
echo "store=$store seconds=$seconds retention: $max_events events; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$load" --url "http://127.0.0.1:$port" --scenario soak --clients 32 --subscribers 200 \
  --seconds "$seconds" --interval "$interval" --server-pid "$server" ${db:+--db "$db"}
