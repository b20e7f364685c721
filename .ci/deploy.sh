#!/usr/bin/env bash
# The deployment files in deploy/: the systemd units are checked with
# `systemd-analyze verify` (against the binary just built, since the units
# name its installed path) and the sysusers file with a dry run, and the
# Containerfile is built when a container engine is running. Either is skipped, saying why, where its tool is missing.
# The Prometheus alert rules are checked and unit-tested with promtool: taken
# from Debian's `prometheus` package (downloaded, only promtool unpacked, no
# service installed or started) when it is not on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p lablink
binary="$PWD/target/debug/lablink"

if command -v systemd-analyze >/dev/null; then
    units=$(mktemp -d)
    trap 'rm -rf "$units"' EXIT
    for unit in deploy/lablink.service deploy/lablink-backup.service deploy/lablink-backup.timer; do
        sed "s|/usr/local/bin/lablink|$binary|g" "$unit" >"$units/$(basename "$unit")"
    done
    # verify prints what is wrong and exits non-zero on errors; warnings
    # (an unknown directive, a missing command) are made fatal here.
    out=$(cd "$units" && systemd-analyze verify --man=no ./*.service ./*.timer 2>&1 || echo "verify failed")
    if [ -n "$out" ]; then
        echo "$out"
        exit 1
    fi
    echo "deploy: systemd units verified"
    # What the user file would create, without creating it.
    if ! out=$(systemd-sysusers --dry-run "$PWD/deploy/lablink.sysusers" 2>&1); then
        echo "$out"
        exit 1
    fi
    echo "deploy: sysusers file checked"
else
    echo "deploy: systemd units SKIPPED: systemd-analyze is not installed"
fi

promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
    promtool="$PWD/target/promtool/usr/bin/promtool"
    if [ ! -x "$promtool" ]; then
        download=$(mktemp -d)
        (cd "$download" && apt-get download prometheus >/dev/null 2>&1 \
            || { apt-get update >/dev/null && apt-get download prometheus >/dev/null; })
        mkdir -p target/promtool
        dpkg-deb --fsys-tarfile "$download"/prometheus_*.deb | tar -x -C target/promtool ./usr/bin/promtool
        rm -rf "$download"
    fi
fi
"$promtool" check rules deploy/prometheus/lablink-alerts.yml
(cd deploy/prometheus && "$promtool" test rules lablink-alerts.test.yml)
echo "deploy: Prometheus alert rules checked and tested with $promtool"

engine=""
for candidate in podman docker; do
    if command -v "$candidate" >/dev/null && timeout 10 "$candidate" info >/dev/null 2>&1; then
        engine=$candidate
        break
    fi
done
if [ -n "$engine" ]; then
    "$engine" build -f deploy/Containerfile -t lablink-ci .
    echo "deploy: Containerfile built with $engine"
else
    echo "deploy: Containerfile build SKIPPED: no running podman or docker"
fi
