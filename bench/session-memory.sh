#!/usr/bin/env bash
# Resident memory per idle session: starts a release LabLink on the memory
# store, reads its RSS, opens sessions (never ended) for SECONDS, reads the
# RSS again, and divides.   bench/session-memory.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
source bench/lib.sh
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
start_server memory
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
# Warm up allocator and connection buffers before the baseline.
"$load" --url "http://127.0.0.1:$port" --scenario status --clients 32 --seconds 1 >/dev/null
before=$(rss)
report=$("$load" --url "http://127.0.0.1:$port" --scenario open-sessions --clients 32 --seconds "$seconds" --json)
after=$(rss)
sessions=$(curl -sf "http://127.0.0.1:$port/api/locks/sessions" | python3 -c 'import sys,json; print(json.load(sys.stdin)["count"])')
python3 - "$before" "$after" "$sessions" <<'PY'
import sys
before, after, sessions = (int(x) for x in sys.argv[1:])
print(f"sessions={sessions} rss_before={before}KiB rss_after={after}KiB per_session={(after-before)*1024/sessions:.0f} bytes")
PY
