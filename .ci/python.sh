#!/usr/bin/env bash
# CI: the Python client (clients/python). Makes a venv of pinned versions
# under target/ (reused while the pins are the same), installs the package
# from the source tree as a user would (`pip install ./clients/python`),
# type-checks it, builds the server binary, and runs its pytest suite against
# that binary (each test starts its own server on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python-client-venv
wanted="httpx==0.28.1 websockets==15.0.1 requests==2.32.5 pytest==8.4.2 pytest-asyncio==1.2.0 mypy==1.18.2"
if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "$wanted" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted
    echo "$wanted" >"$venv/.pinned"
fi
# Always the current source; its dependencies are the pinned ones above.
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
"$venv/bin/pip" check --disable-pip-version-check >/dev/null

"$venv/bin/mypy" --strict --cache-dir "$venv/mypy-cache" clients/python/src/lablink

cargo build --quiet --bin lablink
cd clients/python
LABLINK_BIN="$PWD/../../target/debug/lablink" "../../$venv/bin/python" -m pytest -p no:cacheprovider -q
