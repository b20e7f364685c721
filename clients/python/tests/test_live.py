"""The live feed's delivery rules, without a server: each event once, in
`seq` order, notifications passed on, `lagged` renews the connection."""

from __future__ import annotations

from typing import Any

from lablink._live import LiveFeed


def test_events_at_or_below_the_last_seq_are_dropped_and_notifications_pass():
    got: list[dict[str, Any]] = []
    feed = LiveFeed("ws://unused/api/ws", {}, got.append, session_id="s", after=1)
    messages = [
        {"seq": 1, "event": "queued"},  # before `after`: already seen
        {"seq": 2, "event": "queued"},
        {"type": "subscribed"},
        {"event": "queue_position", "position": 1},
        {"seq": 2, "event": "queued"},  # a replay overlapping what came live
        {"seq": 3, "event": "lock_acquired"},
    ]
    assert all(feed._deliver(m) for m in messages)
    assert got == [
        {"seq": 2, "event": "queued"},
        {"event": "queue_position", "position": 1},
        {"seq": 3, "event": "lock_acquired"},
    ]
    assert feed.last_seq == 3


def test_lagged_asks_for_a_new_connection_resuming_after_the_last_seq():
    got: list[dict[str, Any]] = []
    feed = LiveFeed("ws://unused/api/ws", {}, got.append, all_events=True)
    assert feed._deliver({"seq": 7, "event": "lock_released"})
    assert not feed._deliver({"type": "lagged", "resume_from": 7})
    assert feed.last_seq == 7 and len(got) == 1
