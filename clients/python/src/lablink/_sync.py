"""The synchronous client: :class:`Lab`, for scripts without asyncio.

It runs the asyncio client (:mod:`lablink._aio`) on an event loop in a
background thread that each :class:`Lab` owns, and waits for each call's
result. Why not httpx's sync client plus a thread for the WebSocket: the
waiting, renewal, reconnection and loss detection are subtle, and this way
they exist once, tested through both APIs; the background loop is also what
keeps renewing the lock while the script's own thread is busy (or blocked
in a long instrument call). Callbacks (``on_position``, ``on_lost``) run on
that background thread: keep them short and thread-safe.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Coroutine, Iterator
from datetime import datetime
from types import TracebackType
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, overload

from ._aio import (
    DEFAULT_URL,
    AnyOf,
    AsyncLab,
    AsyncLock,
    AsyncLockGroup,
    GroupMember,
    GroupPositionCallback,
    AsyncSession,
    Event,
    LockMode,
    LostCallback,
    Maintenance,
    PositionCallback,
    Trade,
)
from ._live import LiveFeed
from .errors import LockLost

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lablink-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any error) in the caller's thread: stop the work in
            # the loop too, so it cleans up (a waiter leaves its queue).
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


async def _call(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Lab:
    """A LabLink server, for ordinary (synchronous) Python.

    >>> lab = Lab("http://127.0.0.1:8000")
    >>> with lab.session("battery test", timeout=600) as s:
    ...     with s.lock("ps_abc123", wait=3600, on_position=print) as lk:
    ...         lk.command("set_voltage", voltage=12.0)

    Arguments are those of :class:`~lablink.AsyncLab`. ``close()`` (or a
    ``with Lab(...) as lab`` block) stops its background thread; a
    forgotten one is a daemon thread and does not keep the program alive.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        http_timeout: float = 30.0,
        user_agent: str | None = None,
    ) -> None:
        self._runner = _LoopThread()

        async def make() -> AsyncLab:
            return AsyncLab(url, token, http_timeout=http_timeout, user_agent=user_agent)

        self._lab = self._runner.run(make())
        self.url = self._lab.url
        # Event streams not run to their end: `close()` closes them (a loop
        # that breaks out of `for ev in lab.events(...)` leaves one open).
        self._streams: set[AsyncGenerator[Event, None]] = set()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections and stops the background thread."""
        if self._runner.loop.is_closed():
            return
        for stream in list(self._streams):
            self._runner.run(_call(stream.aclose()))
        self._runner.run(self._lab.aclose())
        self._runner.stop()

    @property
    def aio(self) -> AsyncLab:
        """The :class:`~lablink.AsyncLab` underneath (runs on this lab's own loop)."""
        return self._lab

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Sends one API request; see :meth:`AsyncLab.request`."""
        return self._runner.run(self._lab.request(method, path, json=json, params=params, timeout=timeout))

    def equipment(self) -> list[dict[str, Any]]:
        """The instruments the server has."""
        return self._runner.run(self._lab.equipment())

    def status(self, equipment_id: str) -> dict[str, Any]:
        """An instrument's lock status: holder, time left, fencing token, queue length."""
        return self._runner.run(self._lab.status(equipment_id))

    def queue(self, equipment_id: str) -> list[dict[str, Any]]:
        """Who waits for an instrument, next first."""
        return self._runner.run(self._lab.queue(equipment_id))

    def force_release(self, equipment_id: str, *, as_session: str = "admin") -> dict[str, Any]:
        """Force-releases whoever holds an instrument (admins only, with authentication on)."""
        return self._runner.run(self._lab.force_release(equipment_id, as_session=as_session))

    def start_maintenance(self, equipment_id: str, reason: str, *, until: datetime | str | None = None) -> Maintenance:
        """Takes an instrument out of service; see :meth:`AsyncLab.start_maintenance`."""
        return self._runner.run(self._lab.start_maintenance(equipment_id, reason, until=until))

    def end_maintenance(self, equipment_id: str) -> Maintenance:
        """Puts an instrument back in service; see :meth:`AsyncLab.end_maintenance`."""
        return self._runner.run(self._lab.end_maintenance(equipment_id))

    def maintenance(self, equipment_id: str) -> Maintenance | None:
        """The instrument's maintenance, or ``None`` while it is in service."""
        return self._runner.run(self._lab.maintenance(equipment_id))

    def remove_from_queue(
        self, equipment_id: str, session_id: str, *, message: str | None = None, forced_by: str = "admin"
    ) -> dict[str, Any]:
        """Takes another session's queue place; see :meth:`AsyncLab.remove_from_queue`."""
        return self._runner.run(
            self._lab.remove_from_queue(equipment_id, session_id, message=message, forced_by=forced_by)
        )

    def force_end_session(self, session_id: str, *, message: str | None = None, forced_by: str = "admin") -> int:
        """Ends another session; see :meth:`AsyncLab.force_end_session`."""
        return self._runner.run(self._lab.force_end_session(session_id, message=message, forced_by=forced_by))

    def step_back(self, equipment_id: str, session_id: str) -> Trade:
        """Lets the waiter behind go first; see :meth:`AsyncLab.step_back`."""
        return self._runner.run(self._lab.step_back(equipment_id, session_id))

    def swap(self, equipment_id: str, session_id: str, with_session_id: str) -> Trade:
        """Offers or makes a swap of places; see :meth:`AsyncLab.swap`."""
        return self._runner.run(self._lab.swap(equipment_id, session_id, with_session_id))

    def command(
        self,
        equipment_id: str,
        action: str,
        parameters: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        fencing_token: int | None = None,
    ) -> Any:
        """The low-level command; see :meth:`AsyncLab.command`."""
        return self._runner.run(
            self._lab.command(equipment_id, action, parameters, session_id=session_id, fencing_token=fencing_token)
        )

    def newest_seq(self) -> int:
        """The ``seq`` of the newest event in the history (0 when empty)."""
        return self._runner.run(self._lab.newest_seq())

    def session(
        self,
        name: str,
        timeout: float | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> Session:
        """A session for a ``with`` block; see :meth:`AsyncLab.session`."""
        return Session(self._runner, self._lab.session(name, timeout, metadata=metadata))

    def events(
        self,
        equipment: str | None = None,
        *,
        session: str | None = None,
        event: str | None = None,
        since: str | None = None,
        after: int | None = None,
        follow: bool = False,
    ) -> Iterator[Event]:
        """The history and, with ``follow``, live events; see :meth:`AsyncLab.events`."""
        stream = self._lab.events(equipment, session=session, event=event, since=since, after=after, follow=follow)
        self._streams.add(stream)
        try:
            while True:
                try:
                    yield self._runner.run(_call(stream.__anext__()))
                except StopAsyncIteration:
                    return
        finally:
            self._streams.discard(stream)
            if not self._runner.loop.is_closed():
                self._runner.run(_call(stream.aclose()))


Inner = TypeVar("Inner", AsyncSession, AsyncLock)
Block = TypeVar("Block", bound="_Block[Any]")


class _Block(Generic[Inner]):
    """A ``with`` block that runs an asyncio ``async with`` block on the loop."""

    def __init__(self, runner: _LoopThread, inner: Inner) -> None:
        self._runner = runner
        self._inner: Inner = inner

    def __enter__(self: Block) -> Block:
        self._runner.run(self._inner.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._runner.run(self._inner.__aexit__(exc_type, exc, tb))


class Session(_Block[AsyncSession]):
    """A session for a ``with`` block; see :class:`~lablink.AsyncSession`."""

    @property
    def _session(self) -> AsyncSession:
        return self._inner

    @property
    def id(self) -> str:
        """The session id."""
        return self._session.id

    @property
    def info(self) -> dict[str, Any]:
        """The server's answer to the creation."""
        return self._session.info

    @property
    def live_feed(self) -> LiveFeed | None:
        """The session's live event subscription."""
        return self._session.live_feed

    def renew(self) -> None:
        """Renews the session now (a background task does this on its own)."""
        self._runner.run(self._session.renew())

    def lock_group(
        self,
        equipment_ids: str | Sequence[str] = (),
        *,
        any_of: AnyOf | Sequence[str] | None = None,
        wait: float | None = 0,
        mode: LockMode = "exclusive",
        timeout: float | None = None,
        on_position: GroupPositionCallback | None = None,
        on_lost: LostCallback | None = None,
        priority: int | None = None,
        max_wait: float | None = None,
        claim_within: float | None = None,
    ) -> LockGroup:
        """A lock group or pool for a ``with`` block; see :meth:`AsyncSession.lock_group`."""
        return LockGroup(
            self._runner,
            self._session.lock_group(
                equipment_ids,
                any_of=any_of,
                wait=wait,
                mode=mode,
                timeout=timeout,
                on_position=on_position,
                on_lost=on_lost,
                priority=priority,
                max_wait=max_wait,
                claim_within=claim_within,
            ),
        )

    @overload
    def lock(
        self,
        equipment_id: str,
        *,
        wait: float | None = 0,
        mode: LockMode = "exclusive",
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
        on_lost: LostCallback | None = None,
        priority: int | None = None,
        max_wait: float | None = None,
        claim_within: float | None = None,
    ) -> Lock: ...

    @overload
    def lock(
        self,
        equipment_id: list[str] | tuple[str, ...],
        *,
        wait: float | None = 0,
        mode: LockMode = "exclusive",
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
        on_lost: LostCallback | None = None,
        priority: int | None = None,
        max_wait: float | None = None,
        claim_within: float | None = None,
    ) -> LockGroup: ...

    def lock(
        self,
        equipment_id: str | list[str] | tuple[str, ...],
        *,
        wait: float | None = 0,
        mode: LockMode = "exclusive",
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
        on_lost: LostCallback | None = None,
        priority: int | None = None,
        max_wait: float | None = None,
        claim_within: float | None = None,
    ) -> Lock | LockGroup:
        """A lock for a ``with`` block (a list of instruments: a lock group);
        see :meth:`AsyncSession.lock`."""
        inner = self._session.lock(
                equipment_id,
                wait=wait,
                mode=mode,
                timeout=timeout,
                on_position=on_position,
                on_lost=on_lost,
                priority=priority,
                max_wait=max_wait,
                claim_within=claim_within,
            )
        if isinstance(inner, AsyncLockGroup):
            return LockGroup(self._runner, inner)
        return Lock(self._runner, inner)

    def step_back(self, equipment_id: str) -> Trade:
        """Lets the waiter behind this session go first (from another thread
        while a ``lock`` of this session waits)."""
        return self._runner.run(self._session.step_back(equipment_id))

    def swap(self, equipment_id: str, with_session_id: str) -> Trade:
        """Offers to swap this session's place with ``with_session_id``."""
        return self._runner.run(self._session.swap(equipment_id, with_session_id))


class Lock(_Block[AsyncLock]):
    """A held lock; see :class:`~lablink.AsyncLock`."""

    @property
    def _lock(self) -> AsyncLock:
        return self._inner

    @property
    def equipment_id(self) -> str:
        """The instrument."""
        return self._lock.equipment_id

    @property
    def lock_id(self) -> str:
        """The server's lock id."""
        return self._lock.lock_id

    @property
    def fencing_token(self) -> int:
        """This grant's fencing token."""
        return self._lock.fencing_token

    @property
    def info(self) -> dict[str, Any]:
        """The server's lock object."""
        return self._lock.info

    @property
    def lost(self) -> LockLost | None:
        """Why the lock was lost, or ``None`` while it is held."""
        return self._lock.lost

    @property
    def position(self) -> int | None:
        """The last queue position heard while waiting."""
        return self._lock.position

    @property
    def renewals(self) -> int:
        """How many times the lock was renewed."""
        return self._lock.renewals

    def check(self) -> None:
        """Raises :class:`~lablink.errors.LockLost` if the lock was lost."""
        self._lock.check()

    def renew(self) -> None:
        """Renews the lease now (a background task does this on its own)."""
        self._runner.run(self._lock.renew())

    def command(self, action: str, /, **params: Any) -> Any:
        """Runs ``action`` with ``params``; see :meth:`AsyncLock.command`."""
        return self._runner.run(self._lock.command(action, **params))


class Member:
    """One instrument's lock in a :class:`LockGroup`; see :class:`~lablink.GroupMember`."""

    def __init__(self, runner: _LoopThread, member: GroupMember) -> None:
        self._runner = runner
        self._member = member
        self.equipment_id = member.equipment_id
        self.lock_id = member.lock_id
        self.fencing_token = member.fencing_token
        self.info = member.info

    def __repr__(self) -> str:
        return repr(self._member)

    def command(self, action: str, /, **params: Any) -> Any:
        """Runs ``action`` on this instrument with its own fencing token."""
        return self._runner.run(self._member.command(action, **params))


class LockGroup(Lock):
    """A held lock group or pool grant; see :class:`~lablink.AsyncLockGroup`."""

    @property
    def _group(self) -> AsyncLockGroup:
        group = self._inner
        assert isinstance(group, AsyncLockGroup)
        return group

    @property
    def group_id(self) -> str:
        """The server's id for this group (or pool) request."""
        return self._group.group_id

    @property
    def members(self) -> dict[str, Member]:
        """Each instrument's lock, by id, in id order."""
        return {eq: Member(self._runner, m) for eq, m in self._group.members.items()}

    @property
    def equipment_ids(self) -> list[str]:
        """The members held, in id order."""
        return self._group.equipment_ids

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """Each member's fencing token."""
        return self._group.fencing_tokens

    @property
    def positions(self) -> dict[str, int]:
        """While waiting: the place in each member's queue."""
        return dict(self._group.positions)

    def __getitem__(self, equipment_id: str) -> Member:
        return Member(self._runner, self._group[equipment_id])
