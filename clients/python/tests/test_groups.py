"""Lock groups and pools against the real server: a configured group, a
list of instruments, pools by tag and by id (sync and asyncio), waiting in
every member's queue with positions per member, renewal of the whole group
across several leases, a lost member losing the group, release as a whole."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, serve
from lablink import AsyncLab, AsyncLockGroup, EquipmentLocked, Lab, LockGroup, LockLost

BENCH = """
[[equipment]]
id = "psu1"
driver = "sim-psu"
tags = ["psu", "30V"]

[[equipment]]
id = "psu2"
driver = "sim-psu"
tags = ["psu"]

[[equipment]]
id = "psu3"
driver = "sim-psu"
tags = ["psu"]

[[equipment]]
id = "scope1"
driver = "sim-scope"

[[equipment]]
id = "load1"
driver = "sim-load"

[[group]]
id = "bench3"
name = "Bench 3"
members = ["psu1", "scope1", "load1"]
"""


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "lablink.toml"
    config.write_text(BENCH)
    yield from serve(tmp_path, LABLINK_CONFIG=str(config))


def holders(lab: Lab, *ids: str) -> list[tuple[Any, Any]]:
    return [(lab.status(eq).get("session_id"), lab.status(eq).get("group_id")) for eq in ids]


async def until(condition: Any, what: str) -> None:
    """Waits (at most 10 s) for `condition()` to hold."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def test_a_configured_group_a_list_and_pools_sync(bench: Server) -> None:
    with Lab(bench.url) as lab, lab.session("bench test", timeout=600) as s:
        with s.lock_group("bench3") as g:
            assert isinstance(g, LockGroup)
            assert g.group_id.startswith("grp_")
            assert g.equipment_ids == ["load1", "psu1", "scope1"]
            assert g.fencing_tokens == {"load1": 1, "psu1": 1, "scope1": 1}
            assert g["psu1"].lock_id == "lock_psu1_1"
            g["psu1"].command("set_voltage", voltage=12.0)
            assert g.members["psu1"].command("get_readings")["channels"][0]["voltage_set"] == 12.0
            assert holders(lab, "psu1", "scope1", "load1") == [(s.id, g.group_id)] * 3
            with pytest.raises(ValueError, match="group\\[equipment_id\\]"):
                g.command("get_readings")  # which member?
            group_id = g.group_id
        assert holders(lab, "psu1", "scope1", "load1") == [(None, None)] * 3
        kinds = [e["event"] for e in lab.events("scope1", session=s.id)]
        assert kinds == ["lock_acquired", "lock_released"]

        # A list is a lock group too.
        with s.lock(["scope1", "psu2"]) as g2:
            assert isinstance(g2, LockGroup)
            assert g2.equipment_ids == ["psu2", "scope1"]
            assert g2.group_id not in ("", group_id)

        # Pools: psu1 is busy, so another supply; a pool's one member
        # takes commands directly.
        with lab.session("other", timeout=600) as other, other.lock("psu1"):
            with s.lock_group(any_of={"tags": ["psu"]}) as pool:
                assert pool.equipment_ids == ["psu2"]
                assert pool.command("get_readings")["channels"]
            with s.lock_group(["scope1"], any_of=["psu1", "psu3"]) as pool:
                assert pool.equipment_ids == ["psu3", "scope1"]
            # Every tag must fit: only psu1 is 30V, and it is busy.
            with pytest.raises(EquipmentLocked):
                with s.lock_group(any_of={"tags": ["psu", "30V"]}):
                    pass
            assert lab.queue("psu1") == [], "wait=0 does not queue"


async def test_a_group_waits_in_every_queue_renews_as_one_and_is_lost_as_one(bench: Server) -> None:
    async with AsyncLab(bench.url) as lab:
        async with lab.session("holder", timeout=600) as h, lab.session("bench", timeout=600) as s:
            positions: list[tuple[str, int]] = []
            lost: list[LockLost] = []
            held = h.lock("psu1")
            await held.__aenter__()
            block = s.lock_group(
                ["psu1", "scope1"], wait=None, timeout=1, on_position=lambda eq, p: positions.append((eq, p)), on_lost=lost.append
            )
            waiting = asyncio.create_task(block.__aenter__())
            await until(lambda: len(positions) == 2, "a place in each queue")
            assert sorted(positions) == [("psu1", 1), ("scope1", 1)]
            assert block.positions == {"psu1": 1, "scope1": 1}
            assert [e["session_id"] for e in await lab.queue("scope1")] == [s.id], "waits on the free one too"
            await held.__aexit__(None, None, None)
            g = await asyncio.wait_for(waiting, 10)
            assert isinstance(g, AsyncLockGroup)
            assert g.equipment_ids == ["psu1", "scope1"]
            # Renewed as one across several 1 s leases.
            await asyncio.sleep(2.5)
            assert g.renewals >= 2
            statuses = [await lab.status(eq) for eq in ("psu1", "scope1")]
            assert [(st["session_id"], st["group_id"]) for st in statuses] == [(s.id, g.group_id)] * 2
            # One member force-released: the whole group is lost.
            await lab.force_release("scope1")
            await until(lambda: bool(lost), "on_lost")
            assert lost[0].reason == "forced"
            assert lost[0].equipment_id == "scope1"
            with pytest.raises(LockLost):
                await g["psu1"].command("get_readings")
            assert (await lab.status("psu1"))["locked"] is False
            await g.__aexit__(None, None, None)
