"""Tokens: sent on every request and on the WebSocket."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from lablink import Lab
from lablink.errors import Forbidden, InvalidToken, Unauthenticated

EQ = "ps_abc123"


def test_a_token_opens_sessions_locks_commands_and_live_events(auth_server):
    alice = auth_server.create_token("alice", "operator")
    seen: list[dict[str, Any]] = []

    def follow(after: int) -> None:
        with Lab(auth_server.url, token=alice) as own:
            for ev in own.events(equipment=EQ, after=after, follow=True):
                seen.append(ev)
                if ev["event"] == "lock_released":
                    break

    with Lab(auth_server.url, token=alice) as lab:
        follower = threading.Thread(target=follow, args=(lab.newest_seq(),))
        follower.start()
        with lab.session("alice's run") as s, s.lock(EQ, wait=10) as lk:
            lk.command("set_voltage", voltage=5.0)
            # An operator may not force-release: the admin's tool is refused.
            with pytest.raises(Forbidden):
                lab.force_release(EQ)
        follower.join(10)
    assert [e["event"] for e in seen] == ["lock_acquired", "lock_released"]
    assert seen[-1]["user"] == "alice"


def test_no_token_or_a_bad_one_is_refused(auth_server):
    with Lab(auth_server.url) as lab, pytest.raises(Unauthenticated) as caught:
        with lab.session("anonymous"):
            pass
    assert caught.value.status == 401
    with Lab(auth_server.url, token="llk_" + "0" * 64) as lab, pytest.raises(InvalidToken):
        with lab.session("forged"):
            pass
