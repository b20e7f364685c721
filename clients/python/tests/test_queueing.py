"""Queueing and the lab manager's controls against the real server:
priorities, ``max_wait``, claim windows, maintenance, removing a queue
place, ending someone's session, stepping back and swapping (sync and
asyncio)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, serve
from lablink import (
    AsyncLab,
    AsyncSession,
    CannotTrade,
    InMaintenance,
    Lab,
    LockLost,
    QueuePlaceLost,
    QueueTimeout,
)
from lablink.errors import Forbidden, NotInMaintenance

EQ = "ps_abc123"


async def until(condition: Any, what: str) -> None:
    """Waits (at most 10 s) for `condition()` to hold."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


async def queued_sessions(lab: AsyncLab) -> list[str]:
    return [e["session_id"] for e in await lab.queue(EQ)]


async def kinds(lab: AsyncLab, session: str) -> list[str]:
    return [e["event"] async for e in lab.events(EQ, session=session)]


def waiting(s: AsyncSession, **options: Any) -> asyncio.Task[str]:
    """A task that waits for the PSU with `options` and answers the lock id."""

    async def wait() -> str:
        async with s.lock(EQ, wait=None, **options) as lk:
            return lk.lock_id

    return asyncio.create_task(wait())


async def test_a_higher_priority_goes_first_and_positions_follow_the_real_order(server):
    async with AsyncLab(server.url) as lab:
        async with lab.session("holder") as h, lab.session("early") as early, lab.session("urgent") as urgent:
            early_positions: list[int] = []

            async def wait_early() -> str:
                async with early.lock(EQ, wait=None, on_position=early_positions.append) as lk:
                    return lk.lock_id

            async with h.lock(EQ):
                first = asyncio.create_task(wait_early())
                await until(lambda: early_positions == [1], "early queued")
                second = waiting(urgent, priority=3)
                await until(lambda: early_positions == [1, 2], "early told it moved back")
                queue = await lab.queue(EQ)
                assert [(q["session_id"], q["priority"]) for q in queue] == [(urgent.id, 3), (early.id, 0)]
            # Released: served by priority, then arrival (the fencing tokens say in what order).
            assert await second == "lock_ps_abc123_2"
            assert await first == "lock_ps_abc123_3"


async def test_max_wait_ends_the_wait_with_queue_timeout_and_nothing_left(server):
    async with AsyncLab(server.url) as lab:
        async with lab.session("holder") as h, h.lock(EQ):
            async with lab.session("patient") as s:
                with pytest.raises(QueueTimeout) as caught:
                    async with s.lock(EQ, wait=30, max_wait=1):
                        pytest.fail("the block must not run")
                assert isinstance(caught.value, QueuePlaceLost)
                assert (caught.value.reason, caught.value.equipment_id) == ("wait_timeout", EQ)
                assert await lab.queue(EQ) == []
                history = await kinds(lab, s.id)
                assert history == ["queued", "queue_timeout"], "it did not queue again"


async def test_a_manager_removing_the_place_ends_the_wait_without_queueing_again(server):
    async with AsyncLab(server.url) as lab:
        async with lab.session("holder") as h, h.lock(EQ):
            async with lab.session("waiter") as s:
                task = waiting(s)
                for _ in range(1000):
                    if await queued_sessions(lab) == [s.id]:
                        break
                    await asyncio.sleep(0.01)
                entry = await lab.remove_from_queue(EQ, s.id, message="left for lunch", forced_by="lab-manager")
                assert (entry["session_id"], entry["position"]) == (s.id, 1)
                with pytest.raises(QueuePlaceLost) as caught:
                    await task
                assert not isinstance(caught.value, QueueTimeout)
                assert (caught.value.reason, caught.value.message) == ("removed", "left for lunch")
                assert "removed by lab-manager: left for lunch" in caught.value.detail
                await asyncio.sleep(0.3)
                assert await queued_sessions(lab) == []
                assert await kinds(lab, s.id) == ["queued", "dequeued"]


async def test_ending_someones_session_takes_its_lock_and_tells_it(server):
    async with AsyncLab(server.url) as lab:
        lost: list[LockLost] = []
        async with lab.session("holder") as h, h.lock(EQ, on_lost=lost.append) as lk:
            async with lab.session("admin desk"):
                assert await lab.force_end_session(h.id, message="bench needed") == 1
            await until(lambda: bool(lost), "on_lost")
            assert lost[0].reason == "forced"
            with pytest.raises(LockLost):
                await lk.command("get_status")
        assert (await lab.status(EQ))["locked"] is False


async def test_a_handed_over_lock_is_claimed_at_once(tmp_path: Path):
    # No `lock_expiring` warnings: the client renews on one, and a claim
    # window shorter than the warning is warned at once, which would claim
    # it anyway. Here only the client's own claim can keep it.
    for srv in serve(tmp_path, LABLINK_EXPIRY_WARNING_SEC="0"):
        async with AsyncLab(srv.url) as lab:
            async with lab.session("holder") as h, lab.session("waiter", timeout=60) as s:
                async with h.lock(EQ):
                    task = asyncio.create_task(_hold_for(s, 2.0))
                    for _ in range(1000):
                        if await lab.queue(EQ):
                            break
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.3)  # its long poll reaches the server
                readings = await task
                assert readings["voltage_set"] is not None
                events = [e["event"] async for e in lab.events(EQ)]
                assert "claim_expired" not in events


async def _hold_for(s: AsyncSession, seconds: float) -> dict[str, Any]:
    async with s.lock(EQ, wait=None, timeout=60, claim_within=1) as lk:
        assert lk.info.get("claim_by") is None, "claimed: the server dropped claim_by"
        await asyncio.sleep(seconds)  # past the window
        readings = await lk.command("get_readings")
        channel: dict[str, Any] = readings["channels"][0]
        return channel


def test_maintenance_refuses_or_queues_and_ends(server: Server):
    with Lab(server.url) as lab:
        until = datetime.now(timezone.utc) + timedelta(hours=1)
        started = lab.start_maintenance(EQ, "calibration", until=until)
        assert started["reason"] == "calibration"
        assert started["until"] is not None
        assert abs(datetime.fromisoformat(started["until"].replace("Z", "+00:00")) - until) < timedelta(seconds=1)
        assert lab.maintenance(EQ) == started
        with pytest.raises(ValueError):
            lab.start_maintenance(EQ, "x", until=datetime(2030, 1, 1))
        with lab.session("researcher") as s:
            with pytest.raises(InMaintenance) as caught:
                with s.lock(EQ):
                    pytest.fail("in maintenance")
            assert "calibration" in caught.value.detail
            got = threading.Event()
            positions: list[int] = []

            def wait_for_service() -> None:
                with Lab(server.url) as own, own.session("patient") as p:
                    with p.lock(EQ, wait=30, on_position=positions.append):
                        got.set()

            waiter = threading.Thread(target=wait_for_service)
            waiter.start()
            for _ in range(1000):
                if positions:
                    break
                threading.Event().wait(0.01)
            assert positions == [1] and not got.is_set()
            ended = lab.end_maintenance(EQ)
            assert ended == started
            waiter.join(10)
            assert got.is_set(), "served once service resumed"
            assert lab.maintenance(EQ) is None
            with pytest.raises(NotInMaintenance):
                lab.end_maintenance(EQ)


def test_waiters_step_back_and_swap_from_another_thread(server: Server):
    with Lab(server.url) as lab, lab.session("holder") as h, h.lock(EQ):
        sessions = [lab.session(name) for name in ("a", "b", "c")]
        for s in sessions:
            s.__enter__()
        try:
            threads = []
            for s in sessions:
                lock = s.lock(EQ, wait=30)
                t = threading.Thread(target=lambda lk=lock: _enter_and_leave(lk), daemon=True)
                t.start()
                threads.append(t)
                for _ in range(1000):
                    if s.id in [q["session_id"] for q in lab.queue(EQ)]:
                        break
                    threading.Event().wait(0.01)
            a, b, c = (s.id for s in sessions)
            order = lambda: [q["session_id"] for q in lab.queue(EQ)]  # noqa: E731
            assert order() == [a, b, c]
            assert sessions[0].step_back(EQ) == {
                "success": True,
                "status": "stepped_back",
                "equipment_id": EQ,
                "position": 2,
            }
            assert order() == [b, a, c]
            assert sessions[1].swap(EQ, c)["status"] == "offered"
            assert order() == [b, a, c]
            swapped = sessions[2].swap(EQ, b)
            assert (swapped["status"], swapped["position"]) == ("swapped", 1)
            assert order() == [c, a, b]
            with pytest.raises(CannotTrade):
                sessions[1].step_back(EQ)
        finally:
            for s in reversed(sessions):
                s.__exit__(None, None, None)
            for t in threads:
                t.join(10)


def _enter_and_leave(lock: Any) -> None:
    try:
        with lock:
            pass
    except Exception:
        pass  # its session ends under it at the end of the test


@pytest.fixture
def admin_and_operator(auth_server: Server) -> Iterator[tuple[str, str]]:
    yield auth_server.create_token("root", "admin"), auth_server.create_token("olga", "operator")


def test_with_authentication_only_admins_manage_and_raise_priority(auth_server: Server, admin_and_operator):
    root, olga = admin_and_operator
    with Lab(auth_server.url, token=olga) as lab, lab.session("olga's run") as s:
        with pytest.raises(Forbidden):
            lab.start_maintenance(EQ, "mine now")
        with pytest.raises(Forbidden):
            with s.lock(EQ, priority=5):
                pass
        with s.lock(EQ, priority=-1):  # letting others go first is open to all
            with Lab(auth_server.url, token=root) as admin:
                assert admin.start_maintenance(EQ, "calibration")["user"] == "root"
                assert admin.force_end_session(s.id, message="sorry") == 1
