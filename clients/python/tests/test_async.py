"""The asyncio client (`AsyncLab`) against the real server, including a
server restart in the middle of a stream and of a held lock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import lablink._aio
import lablink._live
from lablink import AsyncLab, EquipmentLocked, LockLost, LockWaitTimeout
from lablink.errors import SessionNotFound

EQ = "ps_abc123"


async def history(lab: AsyncLab, **filters: Any) -> list[dict[str, Any]]:
    return [e async for e in lab.events(**filters)]


async def until(condition: Any, what: str) -> None:
    """Waits (at most 10 s) for `condition()` to hold."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


async def test_the_readme_example_async(server):
    async with AsyncLab(server.url) as lab:
        async with lab.session("battery test", timeout=600) as s:
            async with s.lock(EQ, wait=3600, on_position=print) as lk:
                await lk.command("set_voltage", voltage=12.0)
                readings = await lk.command("get_readings")
        assert readings["channels"][0]["voltage_set"] == 12.0
        assert [e["event"] for e in await history(lab, session=s.id)] == [
            "session_created",
            "lock_acquired",
            "lock_released",
            "session_ended",
        ]


async def test_busy_raises_at_once_and_waiters_take_turns(server):
    async with AsyncLab(server.url) as lab:
        order: list[str] = []
        positions: dict[str, list[int]] = {"b": [], "c": []}

        async def waiter(name: str) -> None:
            async with lab.session(name) as s:
                async with s.lock(EQ, wait=60, on_position=positions[name].append) as lk:
                    order.append(name)
                    await lk.command("get_status")

        async with lab.session("a") as a:
            async with a.lock(EQ):
                async with lab.session("impatient") as s:
                    with pytest.raises(EquipmentLocked):
                        async with s.lock(EQ):
                            pass
                b = asyncio.create_task(waiter("b"))
                await until(lambda: positions["b"] == [1], "b queued")
                c = asyncio.create_task(waiter("c"))
                await until(lambda: positions["c"] == [2], "c queued")
            await asyncio.gather(b, c)
        assert order == ["b", "c"]
        assert positions == {"b": [1], "c": [2, 1]}


async def test_a_cancelled_or_timed_out_wait_leaves_nothing_behind(server):
    async with AsyncLab(server.url) as lab, lab.session("holder") as holder, holder.lock(EQ):
        async with lab.session("waiter") as s:
            with pytest.raises(LockWaitTimeout):
                async with s.lock(EQ, wait=0.3):
                    pass
            assert await lab.queue(EQ) == []

            positions: list[int] = []

            async def wait_forever() -> None:
                async with s.lock(EQ, wait=None, on_position=positions.append):
                    pass

            task = asyncio.create_task(wait_forever())
            await until(lambda: positions == [1], "the waiter to queue")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await lab.queue(EQ) == []


async def test_renewal_across_leases_and_loss_when_the_session_is_ended_elsewhere(server):
    async with AsyncLab(server.url) as lab:
        lost: list[LockLost] = []
        async with lab.session("long run", timeout=3) as s:
            async with s.lock(EQ, timeout=2, on_lost=lost.append) as lk:
                await asyncio.sleep(4.5)  # over two lock leases
                await lk.command("get_status")
                assert (await lab.status(EQ))["lock_id"] == lk.lock_id
                assert lk.renewals >= 3
                # Someone ends our session (another tab, an admin script).
                await lab.request("DELETE", f"/api/locks/sessions/{s.id}")
                await until(lambda: lost, "on_lost")
                with pytest.raises(LockLost) as caught:
                    await lk.command("get_status")
                assert caught.value.reason == "session_ended"
        names = [e["event"] for e in await history(lab, session=s.id)]
        assert "lock_expired" not in names and "session_expired" not in names


async def test_the_expiry_warning_alone_keeps_a_lock(server, monkeypatch):
    # The timer would renew only after 50 leases: `lock_expiring` (sent
    # halfway through a lease this short) is what renews it here.
    monkeypatch.setattr(lablink._aio, "RENEW_AFTER", 50)
    async with AsyncLab(server.url) as lab, lab.session("warned", timeout=0) as s:
        async with s.lock(EQ, timeout=2) as lk:
            await asyncio.sleep(4.5)  # over two leases
            await lk.command("get_status")
            assert lk.renewals >= 2
        assert "lock_expired" not in [e["event"] for e in await history(lab, session=s.id)]


async def test_a_wait_stops_when_the_session_is_ended_elsewhere(server):
    async with AsyncLab(server.url) as lab, lab.session("holder") as holder, holder.lock(EQ):
        positions: list[int] = []
        async with lab.session("waiter") as s:

            async def wait() -> None:
                async with s.lock(EQ, wait=60, on_position=positions.append):
                    pass

            waiter = asyncio.create_task(wait())
            await until(lambda: positions == [1], "the waiter to queue")
            await lab.request("DELETE", f"/api/locks/sessions/{s.id}")
            with pytest.raises(SessionNotFound):
                await waiter
            assert s.ended_by_server == "session_ended"
        # It did not come back as an implicit session, nor stay in the queue.
        assert await lab.queue(EQ) == []
        with pytest.raises(SessionNotFound):
            await lab.request("GET", f"/api/locks/sessions/{s.id}")


async def test_an_expired_lock_is_lost(server):
    async with AsyncLab(server.url) as lab, lab.session("stalled") as s:
        lost: list[LockLost] = []
        async with s.lock(EQ, timeout=0.5, on_lost=lost.append) as lk:
            assert lk._renewer is not None
            lk._renewer.cancel()  # a client that stopped renewing
            await until(lambda: lost, "on_lost")
            assert lost[0].reason == "timeout"
            with pytest.raises(LockLost):
                await lk.command("get_status")


async def test_a_stream_resumes_across_a_server_restart_without_gaps_or_repeats(server, monkeypatch):
    # Reconnect after a second, so the events recorded right after the
    # restart surely come from the replay.
    monkeypatch.setattr(lablink._live, "RECONNECT_FIRST_DELAY", 1.0)
    async with AsyncLab(server.url) as lab:
        seen: list[dict[str, Any]] = []

        async def follow(after: int) -> None:
            async for ev in lab.events(equipment=EQ, after=after, follow=True):
                seen.append(ev)

        async def lock_cycle(name: str) -> None:
            async with lab.session(name) as s, s.lock(EQ):
                pass

        follower = asyncio.create_task(follow(await lab.newest_seq()))
        await lock_cycle("before")
        await until(lambda: len(seen) == 2, "the events before the restart")
        server.restart()
        # Recorded while the follower is still reconnecting: it must get
        # them from the replay, then the later ones live.
        await lock_cycle("during")
        await until(lambda: len(seen) == 4, "the replayed events")
        await lock_cycle("after")
        await until(lambda: len(seen) == 6, "the live events after the restart")
        await asyncio.sleep(0.3)
        follower.cancel()
        recorded = await history(lab, equipment=EQ)
        assert [e["seq"] for e in seen] == [e["seq"] for e in recorded]
        assert [e["event"] for e in seen] == ["lock_acquired", "lock_released"] * 3


async def test_following_without_a_start_begins_now(server):
    async with AsyncLab(server.url) as lab:
        async with lab.session("earlier") as s, s.lock(EQ):
            pass
        earlier = await lab.newest_seq()
        seen: list[dict[str, Any]] = []

        async def follow() -> None:
            async for ev in lab.events(equipment=EQ, follow=True):
                seen.append(ev)

        follower = asyncio.create_task(follow())
        while not seen:  # until the follower has subscribed and hears one
            async with lab.session("later") as s, s.lock(EQ):
                pass
        follower.cancel()
        # Nothing from before it started (it may join in mid-cycle).
        assert seen[0]["seq"] > earlier


async def test_a_held_lock_survives_a_server_restart(server):
    async with AsyncLab(server.url) as lab:
        async with lab.session("through a restart", timeout=3) as s:
            async with s.lock(EQ, timeout=2) as lk:
                server.restart()
                await asyncio.sleep(3)  # longer than a lease: renewal resumed
                await lk.command("get_status")
                assert lk.lost is None
                assert s.live_feed is not None and s.live_feed.reconnects >= 1
            assert (await lab.status(EQ))["locked"] is False
        with pytest.raises(SessionNotFound):
            await lab.request("GET", f"/api/locks/sessions/{s.id}")
