#!/usr/bin/env bash
# CI: the API against its own document. Validates /openapi.json with
# openapi-spec-validator, then fuzzes every operation with schemathesis (all
# checks, all phases including stateful, a bounded number of examples) on
# the memory store, on a SQLite store, and on SQLite with authentication on.
# Any failure fails CI. Exclusions that hold by design are in
# .ci/schemathesis.toml, each with its reason.
#
# Env: SCHEMATHESIS_EXAMPLES (per operation, default 100), SCHEMATHESIS_SEED
# (default 1: the same cases every run; set another to explore).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-1}

# A venv of pinned versions, kept under target/ so later runs reuse it.
venv=target/schemathesis-venv
wanted="schemathesis==$SCHEMATHESIS_VERSION openapi-spec-validator==$VALIDATOR_VERSION"
if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "$wanted" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted
    echo "$wanted" >"$venv/.pinned"
fi

cargo build --quiet --bin lablink
lablink=$PWD/target/debug/lablink
work=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME ARGS...: runs `lablink serve ARGS` on a free port until it answers.
start() {
    local name=$1
    shift
    port=$(free_port)
    base=http://127.0.0.1:$port
    RUST_LOG=warn "$lablink" serve --bind "127.0.0.1:$port" "$@" >"$work/$name.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        if curl -sf -o /dev/null "$base/openapi.json"; then return 0; fi
        if ! kill -0 "$server" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "schemathesis: the $name server did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

stop() {
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
}

# fuzz NAME [schemathesis args]: runs every check in every phase. One
# worker: with two, hypothesis threads parse Python sources at once and
# CPython 3.11's shared AST state reports "AST constructor recursion depth
# mismatch" (CPython issue 106905) as an error of the operation under test.

fuzz() {
    local name=$1
    shift
    echo "== schemathesis: $name =="
    if ! "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "$base/openapi.json" \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$EXAMPLES" --seed "$SEED" --workers 1 \
        --report junit --report-dir "$work/report-$name" "$@"; then
        echo "schemathesis: failures on the $name server; its log:" >&2
        tail -n 50 "$work/$name.log" >&2
        exit 1
    fi
}

start memory --store memory
curl -sf "$base/openapi.json" >"$work/openapi.json"
"$venv/bin/openapi-spec-validator" --validation-errors all "$work/openapi.json"
fuzz memory
stop

mkdir -p "$work/sqlite"
start sqlite --store "sqlite://$work/sqlite/lablink.db"
fuzz sqlite
stop

# Authentication on: a token made by the CLI on the same store, sent with
# every request; the checks also send requests without it.
mkdir -p "$work/auth"
store="sqlite://$work/auth/lablink.db"
token=$("$lablink" token create --user ci --role admin --store "$store" | grep -o 'llk_[0-9a-f]*' | head -n 1)
LABLINK_AUTH=required start auth --store "$store"
fuzz auth --header "Authorization: Bearer $token"
stop
echo "schemathesis: no failures"
