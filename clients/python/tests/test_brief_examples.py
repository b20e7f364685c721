"""The product brief's own Python `requests` examples, run as written.

The code blocks are read from `shared/spec/lock-system.md` beside the
repository and executed unchanged, in order, in one namespace (they share
`base_url` and `session_id` as a reader following along would). The only
help they get: their hard-coded `http://localhost:8000` is routed to the
test server by wrapping `requests` (the text itself is not edited), and the
test sets the scene between blocks (someone else holds the power supply, so
the queue example really queues) and checks what each block did.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests

from lablink import Lab

from conftest import REPO

BRIEF = REPO.parent / "shared" / "spec" / "lock-system.md"
WRITTEN_BASE = "http://localhost:8000"


def brief_blocks() -> dict[str, str]:
    """The brief's usage examples by heading, and its admin force unlock."""
    if not BRIEF.exists():
        pytest.skip(f"the product brief is not beside the repository ({BRIEF})")
    text = BRIEF.read_text()
    usage = text.split("## Usage Examples", 1)[1].split("\n## ", 1)[0]
    blocks = {
        heading: code
        for heading, code in re.findall(r"### ([^\n]+)\n+```python\n(.*?)```", usage, re.S)
    }
    admin = text.split("### Admin Operations", 1)[1]
    blocks["Admin Operations"] = re.search(r"```python\n(.*?)```", admin, re.S).group(1)  # type: ignore[union-attr]
    return blocks


@pytest.fixture
def routed_to(server, monkeypatch):
    """Sends the examples' `http://localhost:8000` requests to the test server."""
    original = requests.sessions.Session.request

    def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(WRITTEN_BASE):
            url = server.url + url[len(WRITTEN_BASE) :]
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.sessions.Session, "request", request)
    return server


def run(code: str, namespace: dict[str, Any]) -> None:
    exec(compile(code, str(BRIEF), "exec"), namespace)


def test_the_briefs_requests_examples_run_unchanged(routed_to, capsys):
    blocks = brief_blocks()
    assert list(blocks) == [
        "Basic Workflow",
        "Observer Mode Example",
        "Queue Example",
        "Keeping Lock Alive",
        "Admin Operations",
    ]
    ns: dict[str, Any] = {}
    with Lab(routed_to.url) as lab:
        run(blocks["Basic Workflow"], ns)
        assert "Lock acquired!" in capsys.readouterr().out
        session_id = ns["session_id"]
        assert ns["cmd_resp"].json()["success"] is True
        assert lab.status("ps_abc123")["locked"] is False

        run(blocks["Observer Mode Example"], ns)
        assert ns["observer_resp"].json()["status"] == "locked"
        assert ns["status_resp"].json()["data"]["channel"] == 1

        with lab.session("someone else") as other, other.lock("ps_abc123"):
            run(blocks["Queue Example"], ns)
            assert "Equipment busy, queued at position 1" in capsys.readouterr().out
            assert [w["session_id"] for w in lab.queue("ps_abc123")] == [session_id]
        # The other session left: the example's session has the lock now.
        granted = lab.status("ps_abc123")
        assert granted["session_id"] == session_id

        run(blocks["Keeping Lock Alive"], ns)
        for _ in range(1000):  # the thread's first renewal
            renewed = lab.status("ps_abc123")
            if renewed["expires_at"] != granted["expires_at"]:
                break
            time.sleep(0.01)
        assert renewed["expires_at"] > granted["expires_at"]

        run(blocks["Admin Operations"], ns)
        assert lab.status("ps_abc123")["locked"] is False
        assert [e["event"] for e in lab.events(equipment="ps_abc123")][-1] == "lock_force_released"

