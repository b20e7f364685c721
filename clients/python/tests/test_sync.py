"""The synchronous client (`Lab`) against the real server."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from lablink import EquipmentLocked, Lab, LabLinkError, LockLost, LockWaitTimeout
from lablink.errors import SessionNotFound

EQ = "ps_abc123"


def event_names(lab: Lab, **filters: Any) -> list[str]:
    return [e["event"] for e in lab.events(**filters)]


def count_requests(lab: Lab, sent: list[str] | None = None) -> list[str]:
    """Records `METHOD path` of every request `lab` sends from now on (into `sent`)."""
    sent = [] if sent is None else sent

    async def hook(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    lab.aio._http.event_hooks["request"].append(hook)
    return sent


def test_the_readme_example_locks_commands_and_releases(server):
    with Lab(server.url, token=None) as lab:
        with lab.session("battery test", timeout=600) as s:
            with s.lock(EQ, wait=3600, on_position=print) as lk:
                lk.command("set_voltage", voltage=12.0)
                readings = lk.command("get_readings")
                assert lab.status(EQ)["session_id"] == s.id
            session_id = s.id
        assert readings["channels"][0]["voltage_set"] == 12.0
        assert lab.status(EQ)["locked"] is False
        assert event_names(lab, session=session_id) == [
            "session_created",
            "lock_acquired",
            "lock_released",
            "session_ended",
        ]


def test_the_lab_lists_its_instruments(server):
    with Lab(server.url) as lab:
        assert [e["equipment_id"] for e in lab.equipment()] == ["ps_abc123", "scope_123", "load_1"]


def test_a_busy_instrument_raises_equipment_locked_at_once(server):
    with Lab(server.url) as lab, lab.session("holder") as holder, holder.lock(EQ):
        with lab.session("latecomer") as s:
            with pytest.raises(EquipmentLocked) as caught:
                with s.lock(EQ):
                    pytest.fail("the block must not run")
        assert caught.value.code == "equipment_locked"
        assert caught.value.status == 409
        assert holder.id in caught.value.detail
        assert lab.queue(EQ) == []


def test_waiters_hear_their_positions_and_get_the_lock_in_turn(server):
    with Lab(server.url) as lab:
        positions: dict[str, list[int]] = {"b": [], "c": []}
        got: list[str] = []
        queued = {"b": threading.Event(), "c": threading.Event()}
        acquires_by_c: list[str] = []

        def waiter(name: str, release: threading.Event) -> None:
            with Lab(server.url) as own:
                if name == "c":
                    count_requests(own, acquires_by_c)

                def heard(position: int) -> None:
                    positions[name].append(position)
                    queued[name].set()

                with own.session(name) as s, s.lock(EQ, wait=60, on_position=heard) as lk:
                    got.append(name)
                    lk.command("get_status")
                    release.wait(10)

        release_b, release_c = threading.Event(), threading.Event()
        b = threading.Thread(target=waiter, args=("b", release_b))
        c = threading.Thread(target=waiter, args=("c", release_c))
        with lab.session("a") as a:
            with a.lock(EQ):
                b.start()
                assert queued["b"].wait(10)
                c.start()
                assert queued["c"].wait(10)
                assert [w["client_name"] for w in lab.queue(EQ)] == ["b", "c"]
            # a released: b's turn, and c moves up to 1.
            release_b.set()
            b.join(10)
            release_c.set()
            c.join(10)
        assert got == ["b", "c"]
        assert positions == {"b": [1], "c": [2, 1]}
        # c heard its move from 2 to 1 over the WebSocket while one
        # long-polling acquire was open: it never asked again.
        assert [r for r in acquires_by_c if r.endswith("/acquire")] == ["POST /api/locks/acquire"]


def test_a_wait_that_runs_out_raises_and_leaves_the_queue(server):
    with Lab(server.url) as lab, lab.session("holder") as holder, holder.lock(EQ):
        with lab.session("patient") as s:
            with pytest.raises(LockWaitTimeout) as caught:
                with s.lock(EQ, wait=0.5):
                    pytest.fail("the block must not run")
            assert isinstance(caught.value, EquipmentLocked)
            assert lab.queue(EQ) == []
            assert event_names(lab, session=s.id)[-2:] == ["queued", "dequeued"]


def test_the_lock_and_session_are_renewed_across_several_leases(server):
    with Lab(server.url) as lab:
        with lab.session("long run", timeout=3) as s:
            with s.lock(EQ, timeout=2) as lk:
                token, lock_id = lk.fencing_token, lk.lock_id
                time.sleep(5)  # two and a half lock leases, over one and a half session leases
                lk.command("set_voltage", voltage=3.0)
                assert lab.status(EQ)["lock_id"] == lock_id
                assert lk.fencing_token == token
                assert lk.renewals >= 3
            sent = count_requests(lab)
            time.sleep(2)  # lock renewal stopped with its block; the session's goes on
            assert sent and all(r.endswith(f"/sessions/{s.id}/activity") for r in sent)
            sent.clear()
        time.sleep(1)  # and stopped with the session's block
        assert sent == ["DELETE /api/locks/sessions/" + s.id]
        names = event_names(lab, session=s.id)
        assert "lock_expired" not in names and "session_expired" not in names
        assert names[-2:] == ["lock_released", "session_ended"]


def test_a_force_released_lock_calls_back_at_once_and_raises_lock_lost(server):
    lost: list[LockLost] = []
    told = threading.Event()

    def on_lost(error: LockLost) -> None:
        lost.append(error)
        told.set()

    with Lab(server.url) as lab:
        with lab.session("victim") as s:
            with s.lock(EQ, on_lost=on_lost) as lk:
                lab.force_release(EQ)
                assert told.wait(10), "on_lost was not called"
                assert lost[0].reason == "forced"
                with pytest.raises(LockLost) as caught:
                    lk.command("get_status")
                assert caught.value.reason == "forced"
                assert caught.value.equipment_id == EQ
            # The lock block ended quietly (nothing to release).
            assert lk.lost is caught.value
        with pytest.raises(SessionNotFound):
            lab.request("GET", f"/api/locks/sessions/{s.id}")
        assert event_names(lab, session=s.id)[-2:] == ["lock_force_released", "session_ended"]


def test_the_server_refusing_a_lost_lock_raises_lock_lost_with_its_reason(server):
    with Lab(server.url) as lab, lab.session("victim") as s, s.lock(EQ) as lk:
        lab.force_release(EQ)
        # The low-level call does not know; the server says lock_lost.
        with pytest.raises(LockLost) as caught:
            lab.command(EQ, "get_status", session_id=s.id, fencing_token=lk.fencing_token)
        assert (caught.value.status, caught.value.reason) == (403, "forced")


def test_an_exception_in_the_block_releases_and_ends_the_session(server):
    with Lab(server.url) as lab:
        with pytest.raises(ZeroDivisionError):
            with lab.session("crashy") as s, s.lock(EQ):
                1 / 0
        assert lab.status(EQ)["locked"] is False
        with pytest.raises(SessionNotFound):
            lab.request("GET", f"/api/locks/sessions/{s.id}")


def test_observer_locks_run_observe_actions_only(server):
    with Lab(server.url) as lab, lab.session("watcher") as s, s.lock(EQ, mode="observer") as lk:
        assert lk.info["lock_mode"] == "observer"
        lk.command("get_readings")
        with pytest.raises(LabLinkError) as caught:
            lk.command("set_voltage", voltage=1.0)
        assert caught.value.status == 403


def test_events_reads_the_history_and_follows_live(server):
    with Lab(server.url) as lab:
        with lab.session("one") as s, s.lock(EQ):
            pass
        assert event_names(lab, equipment=EQ) == ["lock_acquired", "lock_released"]

        seen: list[dict[str, Any]] = []
        start = lab.newest_seq()

        def follow() -> None:
            with Lab(server.url) as own:
                for ev in own.events(equipment=EQ, after=start, follow=True):
                    seen.append(ev)
                    if len(seen) == 4:
                        break

        t = threading.Thread(target=follow)
        t.start()
        # Whether the follower reads these from the history or live, each
        # comes once, in order; other equipment's events are filtered out.
        with lab.session("two") as s:
            with s.lock("load_1"):
                pass
            with s.lock(EQ):
                pass
            for _ in range(1000):  # the follower is live once it has caught up
                if len(seen) == 2:
                    break
                time.sleep(0.01)
            with s.lock(EQ):
                pass
        t.join(10)
        assert [e["event"] for e in seen] == ["lock_acquired", "lock_released"] * 2
        assert all(e["equipment_id"] == EQ for e in seen)
        assert [e["seq"] for e in seen] == sorted({e["seq"] for e in seen})


def test_ctrl_c_while_waiting_leaves_the_queue_and_ends_the_session(server):
    script = f"""
import sys
from lablink import Lab
lab = Lab({server.url!r})
with lab.session("interrupted") as s:
    print(s.id, flush=True)
    with s.lock({EQ!r}, wait=None, on_position=lambda n: print("position", n, flush=True)):
        pass
"""
    with Lab(server.url) as lab, lab.session("holder") as holder, holder.lock(EQ):
        child = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell's background job ignores SIGINT, and so would the
            # child: give it the default, as a terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert child.stdout is not None
        session_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "position 1"
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=20)
        assert "KeyboardInterrupt" in stderr
        assert lab.queue(EQ) == []
        with pytest.raises(SessionNotFound):
            lab.request("GET", f"/api/locks/sessions/{session_id}")
        assert event_names(lab, session=session_id) == ["session_created", "queued", "dequeued", "session_ended"]
