"""LabLink's Python client: share lab instruments from scripts.

>>> from lablink import Lab
>>> lab = Lab("http://127.0.0.1:8000", token=None)
>>> with lab.session("battery test", timeout=600) as s:
...     with s.lock("ps_abc123", wait=3600, on_position=print) as lk:
...         lk.command("set_voltage", voltage=12.0)
...         print(lk.command("get_readings"))

:class:`Lab` is the synchronous client, :class:`AsyncLab` its asyncio twin
(``async with`` and ``await``). Errors are the classes of
:mod:`lablink.errors`, one per server error code, all subclasses of
:class:`LabLinkError`.
"""

from __future__ import annotations

from ._version import __version__
from ._aio import AnyOf, AsyncLab, AsyncLock, AsyncLockGroup, AsyncSession, Event, GroupMember, Maintenance, Trade
from ._sync import Lab, Lock, LockGroup, Member, Session
from .errors import (
    CannotTrade,
    EquipmentLocked,
    InMaintenance,
    LabLinkError,
    LockLost,
    LockWaitTimeout,
    QueuePlaceLost,
    QueueTimeout,
    ServerUnreachable,
    StaleFencingToken,
)

__all__ = [
    "AnyOf",
    "AsyncLab",
    "AsyncLock",
    "AsyncLockGroup",
    "AsyncSession",
    "CannotTrade",
    "EquipmentLocked",
    "Event",
    "GroupMember",
    "InMaintenance",
    "Lab",
    "LabLinkError",
    "Lock",
    "LockGroup",
    "LockLost",
    "LockWaitTimeout",
    "Maintenance",
    "Member",
    "QueuePlaceLost",
    "QueueTimeout",
    "ServerUnreachable",
    "Session",
    "StaleFencingToken",
    "Trade",
    "__version__",
]
