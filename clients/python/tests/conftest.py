"""Fixtures: the real `lablink` binary, started on a free port with its own
SQLite store in a temporary directory, stopped after each test.

The binary is `$LABLINK_BIN`, else `target/debug/lablink` at the top of the
repository (`.ci/python.sh` builds it). Without it the tests are skipped,
saying why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("LABLINK_BIN", REPO / "target" / "debug" / "lablink"))

# Short leases so renewal and expiry happen within a test; a 1 s expiry
# warning so `lock_expiring` comes into play.
TEST_SETTINGS = {
    "LABLINK_EXPIRY_WARNING_SEC": "1",
    "LABLINK_CLEANUP_INTERVAL_SEC": "1",
}


class Server:
    """One `lablink serve` process; `restart()` keeps its port and store."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.store = f"sqlite://{data_dir / 'lablink.db'}"
        self.env = env
        self.port = 0
        self.log: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clean_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABLINK_")}
        env.update({"RUST_LOG": "info", "NO_COLOR": "1", **self.env})
        return env

    def create_token(self, user: str, role: str) -> str:
        """A new API token, made by `lablink token create` on this store."""
        made = subprocess.run(
            [str(BINARY), "token", "create", "--user", user, "--role", role, "--store", self.store],
            cwd=self.data_dir,
            env=self.clean_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        found = re.search(r"llk_[0-9a-f]{64}", made.stdout)
        assert found is not None, made.stdout + made.stderr
        return found.group(0)

    def start(self) -> None:
        env = self.clean_env()
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--bind", f"127.0.0.1:{self.port}", "--store", self.store],
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        # The server logs the address it listens on once it accepts.
        for line in self.process.stderr:
            self.log.append(line)
            if "addr=" in line:
                self.port = int(line.rsplit("addr=", 1)[1].strip().rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError("the server exited at start:\n" + "".join(self.log))
        stderr = self.process.stderr
        threading.Thread(target=lambda: self.log.extend(stderr), daemon=True).start()

    def stop(self) -> None:
        """SIGTERM, as an operator stopping it would: a graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def serve(data_dir: Path, **settings: str) -> Iterator[Server]:
    if not BINARY.exists():
        pytest.skip(f"the lablink binary is not built ({BINARY}); run `cargo build` first")
    srv = Server(data_dir, {**TEST_SETTINGS, **settings})
    try:
        yield srv
    finally:
        srv.stop()
        # Shown by pytest only when the test failed.
        print("server log:\n" + "".join(srv.log[-40:]))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from serve(tmp_path)


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    """A server with authentication required (tokens from `auth_server.create_token`)."""
    yield from serve(tmp_path, LABLINK_AUTH="required")
