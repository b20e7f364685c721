"""Fixtures for the dashboard's browser tests: real `lablink serve`
processes on free loopback ports, and Debian's Chromium driven headless by
Playwright (never a downloaded browser).

Env: LABLINK_BIN (default target/debug/lablink), CHROMIUM (default
/usr/bin/chromium).
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

# Waits for what a page shows, not for speed: room for a loaded CI machine
# (the assertions about speed give their own timeout).
expect.set_options(timeout=15_000)

REPO = Path(__file__).resolve().parents[2]
LABLINK = os.environ.get("LABLINK_BIN", str(REPO / "target" / "debug" / "lablink"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# The README's pictures are refreshed only when asked
# (LABLINK_UPDATE_SCREENSHOTS=1 .ci/browser.sh); otherwise the tests still
# take them, into target/, so a CI run leaves the work tree as it was.
SCREENSHOTS = (
    REPO / "docs" / "screenshots"
    if os.environ.get("LABLINK_UPDATE_SCREENSHOTS") == "1"
    else REPO / "target" / "screenshots"
)
SCREENSHOTS.mkdir(parents=True, exist_ok=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `lablink serve` process on 127.0.0.1:port with its data in `workdir`."""

    def __init__(self, workdir, port=None, args=(), env=None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.args = list(args)
        self.env = dict(os.environ, RUST_LOG="warn", **(env or {}))
        self.process = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_ids = {}

    def start(self):
        log = open(self.workdir / "server.log", "ab")
        self.process = subprocess.Popen(
            [LABLINK, "serve", "--bind", f"127.0.0.1:{self.port}", *self.args],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lablink exited: {(self.workdir / 'server.log').read_text()}")
            try:
                urllib.request.urlopen(self.url + "/", timeout=1).read()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise RuntimeError("lablink did not start within 30 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def call(self, method, path, body=None, token=None):
        """One API request; answers (status, parsed JSON)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def ok(self, method, path, body=None, token=None):
        status, answer = self.call(method, path, body, token)
        assert status == 200, (status, answer)
        return answer

    def session(self, client_name, user=None, token=None, timeout=600):
        body = {"client_name": client_name, "timeout_seconds": timeout}
        if user:
            body["metadata"] = {"user": user}
        return self.ok("POST", "/api/locks/sessions/create", body, token)["session_id"]

    def token(self, user, role):
        """A token made with the real `lablink token create` on this store."""
        out = subprocess.run(
            [LABLINK, "token", "create", "--user", user, "--role", role, *self.args],
            cwd=self.workdir, env=self.env, check=True, capture_output=True, text=True,
        )
        token = out.stdout.strip().splitlines()[0].strip()
        self.token_ids[token] = re.search(r"created (tok_[0-9a-f]+)", out.stderr).group(1)
        return token

    def revoke(self, token):
        subprocess.run(
            [LABLINK, "token", "revoke", self.token_ids[token], *self.args],
            cwd=self.workdir, env=self.env, check=True, capture_output=True,
        )


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(**kwargs):
        server = Server(tmp_path, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server):
    """A server on SQLite with the three demo instruments."""
    return make_server(args=["--store", "sqlite://lablink.db?synchronous=normal"]).start()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page with its console errors and the hosts it asked recorded."""

    def __init__(self, page):
        self.page = page
        self.console_errors = []
        self.hosts = set()
        page.on("console", lambda m: m.type in ("error", "warning") and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: self.hosts.add(urlsplit(r.url).netloc))
        page.on("websocket", lambda ws: self.hosts.add(urlsplit(ws.url).netloc))


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_(url, viewport=None, color_scheme="light"):
        context = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 800},
            color_scheme=color_scheme, timezone_id="Europe/Berlin", locale="en-GB")
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page)
        page.goto(url)
        return watched

    yield open_
    for context in contexts:
        context.close()
