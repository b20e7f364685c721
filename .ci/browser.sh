#!/usr/bin/env bash
# CI: the dashboard in a real browser. Installs Debian's chromium when
# missing, makes a venv under target/ with pinned Playwright (driving that
# Chromium: no browser is downloaded), pytest and websockets, builds the
# binary, and runs tests/browser against real `lablink serve` processes.
# The tests also refresh the screenshots in docs/screenshots.
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_VERSION=1.65.2
PYTEST_VERSION=9.2.0
WEBSOCKETS_VERSION=17.4

if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

venv=target/browser-venv
wanted="playwright==$PLAYWRIGHT_VERSION pytest==$PYTEST_VERSION websockets==$WEBSOCKETS_VERSION"
if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "$wanted" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted
    echo "$wanted" >"$venv/.pinned"
fi

cargo build --quiet --bin lablink
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 CHROMIUM=${CHROMIUM:-$(command -v chromium)}
cd tests/browser
exec ../../$venv/bin/python -m pytest -q -p no:cacheprovider
