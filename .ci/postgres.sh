#!/usr/bin/env bash
# CI: the PostgreSQL store and several servers on one database. Starts a
# throwaway PostgreSQL cluster, runs every test whose name has `postgres`
# (the store's own tests and contract suite in the library, the
# multi-replica and proxy black-box tests in tests/api) against it, and
# removes the cluster at the end, passed or failed.
#
# Installs Debian's `postgresql` (and `nginx` for the proxy test,
# `libfaketime` for the clock-skew test) when missing; that needs root, as in CI. Runs by hand too, as root or as a
# normal user: PostgreSQL refuses to run as root, so as root the cluster
# belongs to a system user `lablink-ci` (created if missing).
#
# The cluster: initdb in a fresh temporary directory, listening on
# 127.0.0.1 on a free port and on a unix socket in that directory, fsync
# and synchronous_commit on (what production must use), `trust`
# authentication: it is reachable only from this machine, lives only for
# this run and holds only test data, so no password is set.
#
# The tests get:
#   LABLINK_TEST_POSTGRES      postgres://lablink@127.0.0.1:PORT/postgres (a
#                              superuser; each test creates its own database)
#   LABLINK_TEST_POSTGRES_CTL  a script: `stop [fast|immediate]`, `start`,
#                              `restart`, run as the cluster's owner (given
#                              only to the outage test, run on its own)
#   LABLINK_TEST_NGINX         the nginx binary, when there is one
#   LABLINK_TEST_FAKETIME      libfaketime, when there is one
#
# Usage: .ci/postgres.sh [COMMAND...]: with a command, runs it with the
# variables above instead of the tests (the control script only for a
# command naming the outage test, `postgres_outage`).
# Env: POSTGRES_TEST_FILTER (default `postgres`) picks the tests;
# POSTGRES_KEEP_LOG=1 prints the server log even when everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."

FILTER=${POSTGRES_TEST_FILTER:-postgres}
CI_USER=lablink-ci

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "postgres.sh: $* missing and not root: install it (apt-get install $*)" >&2
        return 1
    fi
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    # policy-rc.d 101: the packages' own services (a `main` cluster on port
    # 5432, nginx on port 80) are installed but not started.
    local policy=/usr/sbin/policy-rc.d added=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
    if [ -n "$added" ]; then rm -f "$policy"; fi
    return "$status"
}

# The directory holding initdb and pg_ctl: PATH first, then Debian's
# versioned directories (newest first), else install Debian's package.
find_pg_bin() {
    local dir
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

pg_bin=$(find_pg_bin || true)
if [ -z "$pg_bin" ]; then
    echo "postgres.sh: installing PostgreSQL (Debian's postgresql)" >&2
    apt_install postgresql
    pg_bin=$(find_pg_bin)
fi

# nginx for the reverse-proxy test; that test says it is skipped without it.
nginx_bin=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
if [ -z "$nginx_bin" ] && [ "$(id -u)" -eq 0 ]; then
    echo "postgres.sh: installing nginx (for the reverse-proxy test)" >&2
    apt_install nginx
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi

# libfaketime, for the test of replicas whose clocks differ; that test says
# it is skipped without it.
faketime_lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [ ! -f "$faketime_lib" ] && [ "$(id -u)" -eq 0 ]; then
    echo "postgres.sh: installing libfaketime (for the clock-skew test)" >&2
    apt_install libfaketime
fi
faketime_lib=$(ls /usr/lib/*/faketime/libfaketimeMT.so.1 2>/dev/null | head -n 1 || true)

# Who owns and runs the cluster: ourselves, or as root an unprivileged user.
if [ "$(id -u)" -eq 0 ]; then
    if ! id -u "$CI_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$CI_USER"
    fi
    owner=$CI_USER
    as_owner() { runuser -u "$CI_USER" -- "$@"; }
else
    owner=$(id -un)
    as_owner() { "$@"; }
fi

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

work=$(mktemp -d /tmp/lablink-pg.XXXXXX)
data=$work/data
cleanup() {
    local status=$?
    if [ -f "$data/postmaster.pid" ]; then
        as_owner "$pg_bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ "$status" -ne 0 ] || [ -n "${POSTGRES_KEEP_LOG:-}" ]; then
        echo "postgres.sh: the PostgreSQL log (last 40 lines):" >&2
        tail -n 40 "$work/postgres.log" >&2 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 0755 "$work"
chown "$owner" "$work"

as_owner "$pg_bin/initdb" --pgdata="$data" --username=lablink --auth=trust \
    --encoding=UTF8 --no-locale >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log" >&2; exit 1; }

port=$(free_port)
# In postgresql.conf, so a restart by the control script keeps them.
cat >>"$data/postgresql.conf" <<CONF

# lablink .ci/postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
fsync = on
synchronous_commit = on
full_page_writes = on
# 3 replicas per test, 2 tests at once, each replica with its pool.
max_connections = 400
shared_buffers = 128MB
log_min_messages = warning
log_connections = off
CONF

# The control script the restart test uses: stop/start/restart as the owner.
ctl=$work/restart-postgres
cat >"$ctl" <<SCRIPT
#!/usr/bin/env bash
# Stops, starts or restarts the throwaway cluster of .ci/postgres.sh.
set -euo pipefail
run() { if [ "\$(id -u)" -eq 0 ] && [ "$owner" != root ]; then runuser -u "$owner" -- "\$@"; else "\$@"; fi; }
case "\${1:-restart}" in
    stop) run "$pg_bin/pg_ctl" -D "$data" -m "\${2:-fast}" -w stop >/dev/null ;;
    start) run "$pg_bin/pg_ctl" -D "$data" -l "$work/postgres.log" -w start >/dev/null ;;
    restart) run "$pg_bin/pg_ctl" -D "$data" -l "$work/postgres.log" -m "\${2:-fast}" -w restart >/dev/null ;;
    *) echo "usage: \$0 stop [fast|immediate] | start | restart [fast|immediate]" >&2; exit 2 ;;
esac
SCRIPT
chmod 0755 "$ctl"

"$ctl" start
export LABLINK_TEST_POSTGRES="postgres://lablink@127.0.0.1:$port/postgres"
if [ -n "$nginx_bin" ] && [ -x "$nginx_bin" ]; then
    export LABLINK_TEST_NGINX=$nginx_bin
fi
if [ -n "$faketime_lib" ]; then
    export LABLINK_TEST_FAKETIME=$faketime_lib
fi
echo "postgres.sh: $("$pg_bin/postgres" --version) on 127.0.0.1:$port (owner $owner, data $data)"

# The store's own tests (contract suite included), then the black-box tests
# of several real servers on one database (and behind nginx); last, alone,
# the test that stops and starts PostgreSQL under load: it is the only one
# given the control script, since it takes the cluster away from any test
# running beside it.
# With arguments, runs them instead (one test by hand, against a cluster
# that is gone afterwards): .ci/postgres.sh cargo test --test api NAME
# The control script only when the command names the outage test, which
# stops the cluster under whatever runs beside it.
if [ "$#" -gt 0 ]; then
    case "$*" in
        *postgres_outage*) LABLINK_TEST_POSTGRES_CTL=$ctl "$@" ;;
        *) "$@" ;;
    esac
    exit
fi
# Each runs even when one before failed; any failure fails the script.
failed=0
cargo test --lib "$FILTER" || failed=1
cargo test --test api "$FILTER" || failed=1
LABLINK_TEST_POSTGRES_CTL=$ctl cargo test --test api postgres_outage || failed=1
exit "$failed"
