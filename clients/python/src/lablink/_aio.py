"""The asyncio client: :class:`AsyncLab`, its sessions and locks.

This is the one implementation of the protocol; the synchronous
:class:`~lablink.Lab` runs it on a background event loop. HTTP goes through
one ``httpx.AsyncClient`` per lab; each session keeps one WebSocket
subscription (:class:`~lablink._live.LiveFeed`) for its notifications
(queue position, grant, expiry warning, loss) and keeps itself and its locks
alive with background tasks that end with their ``async with`` block.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from datetime import datetime, timezone
from types import TracebackType
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict, overload

import httpx

from ._live import LiveFeed
from ._version import __version__
from .errors import (
    EquipmentLocked,
    LabLinkError,
    LockLost,
    LockWaitTimeout,
    NoLock,
    NotLockHolder,
    NotQueued,
    QueuePlaceLost,
    QueueTimeout,
    ServerUnreachable,
    SessionNotFound,
    UnexpectedResponse,
    error_from_body,
)

log = logging.getLogger("lablink")

DEFAULT_URL = "http://127.0.0.1:8000"

#: The largest ``wait_seconds`` the server takes in one acquire.
MAX_WAIT_PER_REQUEST = 3600.0
#: The largest cursor the history takes: a page past the newest event whose
#: ``next_cursor`` is the newest ``seq``.
_NEWEST_CURSOR = 2**63 - 1
#: The timer renews a lock (and a session) this far into each lease; the
#: server's `lock_expiring` warning renews a lock at once besides.
RENEW_AFTER = 1 / 3
#: While waiting or renewing, how soon to try again after the server could
#: not be reached (it may be restarting).
RETRY_DELAY = 0.25

LockMode = Literal["exclusive", "observer"]


class Event(TypedDict, total=False):
    """One history event, in the server's JSON shape (README, "Live events").

    Every event has ``seq``, ``event`` and ``timestamp``; the other keys
    appear when they apply.
    """

    seq: int
    event: str
    timestamp: str
    equipment_id: str
    session_id: str
    lock_mode: str
    lock_id: str
    fencing_token: int
    timeout_seconds: float
    position: int
    queue_id: str
    reason: str
    forced_by: str
    locks_released: int
    user: str
    holder_user: str
    implicit: bool
    expires_at: str
    time_remaining: float
    message: str
    priority: int


class Maintenance(TypedDict):
    """An instrument out of service (``maintenance`` in its status)."""

    reason: str
    #: RFC 3339, when it started.
    since: str
    #: When service resumes by itself; ``None``: when an admin ends it.
    until: str | None
    #: The admin who started it (with authentication on).
    user: str | None


class Trade(TypedDict):
    """The answer to a queue trade (``step_back``, ``swap``)."""

    success: bool
    #: ``stepped_back``, ``swapped``, or ``offered`` (a swap waiting for the
    #: other waiter to ask too: nothing moved yet).
    status: Literal["stepped_back", "swapped", "offered"]
    equipment_id: str
    #: The session's 1-based position now.
    position: int


class AnyOf(TypedDict, total=False):
    """A pool: any one free instrument with all of ``tags``, or one of
    ``equipment_ids``."""

    tags: list[str]
    equipment_ids: list[str]


PositionCallback = Callable[[int], Any]
#: A lock group's queue positions: called with the instrument and its
#: 1-based position in that instrument's queue.
GroupPositionCallback = Callable[[str, int], Any]
LostCallback = Callable[[LockLost], Any]

# History events that end a lock its holder did not release itself.
_LOSS_EVENTS = {"lock_expired", "lock_force_released", "observer_revoked", "claim_expired"}
# Release events that are a loss when their reason is one of these (a lab
# manager ended the session, or it expired).
_RELEASE_EVENTS = {"lock_released", "observer_lock_released"}
_LOSS_REASONS = {"forced", "session_expired"}


class AsyncLab:
    """A LabLink server, for asyncio code.

    >>> async with AsyncLab("http://127.0.0.1:8000") as lab:
    ...     async with lab.session("battery test", timeout=600) as s:
    ...         async with s.lock("ps_abc123", wait=3600, on_position=print) as lk:
    ...             await lk.command("set_voltage", voltage=12.0)

    Args:
        url: the server's base URL (``http://host:port``).
        token: an API token (``llk_...``), sent as a Bearer token; needed
            when the server has authentication on.
        http_timeout: seconds to wait for an ordinary answer (acquires that
            wait in the queue get their wait on top).
        user_agent: the ``User-Agent`` sent (the server shows it as the
            client name of implicit sessions).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        http_timeout: float = 30.0,
        user_agent: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers: dict[str, str] = {"user-agent": user_agent or f"lablink-client/{__version__}"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._timeout = http_timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=http_timeout)

    async def __aenter__(self) -> AsyncLab:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP connections (sessions end with their own blocks)."""
        await self._http.aclose()

    @property
    def ws_url(self) -> str:
        """The live events URL (``ws://.../api/ws``)."""
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + "/api/ws"

    # -- plain calls -------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Sends one API request and returns its JSON answer.

        Raises the :mod:`lablink.errors` class of the server's error code,
        or :class:`~lablink.errors.ServerUnreachable`.
        """
        try:
            response = await self._http.request(
                method,
                path,
                json=json,
                params={k: v for k, v in (params or {}).items() if v is not None},
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.TransportError as e:
            raise ServerUnreachable(f"cannot reach the LabLink server at {self.url}: {e!r}") from e
        if response.is_success:
            try:
                return response.json()
            except ValueError as e:
                raise UnexpectedResponse(
                    f"the server answered {response.status_code} with a body that is not JSON",
                    status=response.status_code,
                ) from e
        raise error_from_body(response.status_code, response.text)

    async def equipment(self) -> list[dict[str, Any]]:
        """The instruments the server has (``GET /api/equipment/list``)."""
        answer = await self.request("GET", "/api/equipment/list")
        return list(answer["equipment"])

    async def status(self, equipment_id: str) -> dict[str, Any]:
        """An instrument's lock status: holder, time left, fencing token, queue length."""
        result: dict[str, Any] = await self.request("GET", f"/api/locks/status/{equipment_id}")
        return result

    async def queue(self, equipment_id: str) -> list[dict[str, Any]]:
        """Who waits for an instrument, next first."""
        answer = await self.request("GET", f"/api/locks/queue/{equipment_id}")
        return list(answer["queue"])

    async def force_release(self, equipment_id: str, *, as_session: str = "admin") -> dict[str, Any]:
        """Force-releases whoever holds an instrument (an admin's tool; with
        authentication on it needs an admin token)."""
        result: dict[str, Any] = await self.request(
            "POST",
            "/api/locks/release",
            json={"equipment_id": equipment_id, "session_id": as_session, "force": True},
        )
        return result

    # -- the lab manager's controls (admins once authentication is on) ----

    async def start_maintenance(
        self, equipment_id: str, reason: str, *, until: datetime | str | None = None
    ) -> Maintenance:
        """Takes an instrument out of service until ``until`` (a timezone-aware
        ``datetime`` or an RFC 3339 string; ``None``: until
        :meth:`end_maintenance`). New requests then raise
        :class:`~lablink.errors.InMaintenance`, or wait in the queue; the
        holder keeps its lock. Starting it again replaces reason and end."""
        if isinstance(until, datetime):
            if until.tzinfo is None:
                raise ValueError("until must be timezone-aware (datetime.now(timezone.utc) + ...)")
            until = until.astimezone(timezone.utc).isoformat()
        answer = await self.request(
            "POST", f"/api/equipment/{equipment_id}/maintenance", json={"reason": reason, "until": until}
        )
        result: Maintenance = answer["maintenance"]
        return result

    async def end_maintenance(self, equipment_id: str) -> Maintenance:
        """Puts an instrument back in service now (its queue is served);
        returns the maintenance that ended. Raises
        :class:`~lablink.errors.NotInMaintenance` if there was none."""
        answer = await self.request("DELETE", f"/api/equipment/{equipment_id}/maintenance")
        result: Maintenance = answer["maintenance"]
        return result

    async def maintenance(self, equipment_id: str) -> Maintenance | None:
        """The instrument's maintenance, or ``None`` while it is in service."""
        found: Maintenance | None = (await self.status(equipment_id)).get("maintenance")
        return found

    async def remove_from_queue(
        self, equipment_id: str, session_id: str, *, message: str | None = None, forced_by: str = "admin"
    ) -> dict[str, Any]:
        """Takes another session's place in a queue; returns the entry as it
        was. The waiter is told (``queue_place_lost``, with ``message``);
        ``forced_by`` is recorded as in :meth:`force_release`."""
        answer = await self.request(
            "POST",
            f"/api/locks/queue/{equipment_id}/{session_id}/remove",
            json={"forced_by": forced_by, "message": message},
        )
        entry: dict[str, Any] = answer["queue_entry"]
        return entry

    async def force_end_session(
        self, session_id: str, *, message: str | None = None, forced_by: str = "admin"
    ) -> int:
        """Ends another session: its locks are released (whatever the
        server's auto-release setting), its queue places go, its holder hears
        ``lock_lost``. Returns how many locks were released."""
        answer = await self.request(
            "POST", f"/api/locks/sessions/{session_id}/end", json={"forced_by": forced_by, "message": message}
        )
        return int(answer["locks_released"])

    # -- trading queue places (a waiter's own session) ----------------------

    async def step_back(self, equipment_id: str, session_id: str) -> Trade:
        """Lets the waiter right behind ``session_id`` go first. Raises
        :class:`~lablink.errors.CannotTrade` when last in line."""
        result: Trade = await self.request(
            "POST", f"/api/locks/queue/{equipment_id}/step-back", json={"session_id": session_id}
        )
        return result

    async def swap(self, equipment_id: str, session_id: str, with_session_id: str) -> Trade:
        """Offers to swap places with another waiter; the swap happens when
        both have asked (``status`` says ``offered`` or ``swapped``)."""
        result: Trade = await self.request(
            "POST",
            f"/api/locks/queue/{equipment_id}/swap",
            json={"session_id": session_id, "with_session_id": with_session_id},
        )
        return result

    async def command(
        self,
        equipment_id: str,
        action: str,
        parameters: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        fencing_token: int | None = None,
    ) -> Any:
        """Runs an instrument action and returns its ``data``.

        The low-level form, for sessions this client does not manage; inside
        a ``lock`` block use :meth:`AsyncLock.command`, which sends the
        session and fencing token itself.
        """
        body: dict[str, Any] = {
            "command_id": f"cmd_{uuid.uuid4().hex[:16]}",
            "equipment_id": equipment_id,
            "action": action,
            "parameters": parameters or {},
            "session_id": session_id,
        }
        if fencing_token is not None:
            body["fencing_token"] = fencing_token
        answer = await self.request("POST", f"/api/equipment/{equipment_id}/command", json=body)
        return answer.get("data")

    async def newest_seq(self) -> int:
        """The ``seq`` of the newest event in the history (0 when empty)."""
        page = await self.request("GET", "/api/locks/events", params={"cursor": _NEWEST_CURSOR, "limit": 1})
        return int(page.get("next_cursor") or 0)

    # -- sessions ----------------------------------------------------------

    def session(
        self,
        name: str,
        timeout: float | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncSession:
        """A session, opened by ``async with`` and ended when the block ends.

        Args:
            name: the client name others see (``client_name``).
            timeout: seconds of inactivity after which the server ends it
                (``None``: the server's default; ``0``: never). The client
                renews it in the background while the block runs.
            metadata: a JSON object stored with the session.
        """
        return AsyncSession(self, name, timeout, metadata)

    # -- history and live events ------------------------------------------

    async def events(
        self,
        equipment: str | None = None,
        *,
        session: str | None = None,
        event: str | None = None,
        since: str | None = None,
        after: int | None = None,
        follow: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """The history, oldest first, and with ``follow`` the events as they happen.

        Args:
            equipment: only this instrument's events.
            session: only events naming this session.
            event: only events of this kind (``lock_acquired``, ...).
            since: only events from this RFC 3339 time on.
            after: only events after this ``seq``.
            follow: keep going with live events (never ends; break out of
                the loop to stop). Without ``since`` or ``after`` it starts
                from now; with one of them it first reads the history from
                there. Live events are the same JSON as the history's,
                delivered once each, in ``seq`` order, across reconnects
                (a server restart included).
        """
        wanted = _EventFilter(equipment, session, event)
        newest = await self.newest_seq() if follow else 0
        last = after
        if not follow or since is not None or after is not None:
            cursor = after
            while True:
                page = await self.request(
                    "GET",
                    "/api/locks/events",
                    params={
                        "equipment_id": equipment,
                        "session_id": session,
                        "event": event,
                        "since": since,
                        "cursor": cursor,
                        "limit": 1000,
                    },
                )
                for item in page["events"]:
                    last = item["seq"]
                    yield item
                if not page["events"] or not page.get("has_more"):
                    break
                cursor = page["next_cursor"]
        if not follow:
            return
        # Resume after what was read (or from now): the server replays any
        # event recorded since, then goes live.
        last = max(newest, last or 0)
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(message: dict[str, Any]) -> None:
            if wanted(message):
                queue.put_nowait(message)  # type: ignore[arg-type]  # a history event

        feed = LiveFeed(
            self.ws_url,
            self._headers,
            deliver,
            equipment_ids=[equipment] if equipment else None,
            session_id=session,
            all_events=not equipment and not session,
            after=last,
        )
        await feed.start()
        try:
            while True:
                yield await queue.get()
        finally:
            await feed.close()


class _EventFilter:
    """Applies ``events()``'s filters to live messages (the WebSocket
    subscription is by equipment OR session; the history's filters AND)."""

    def __init__(self, equipment: str | None, session: str | None, event: str | None) -> None:
        self.equipment, self.session, self.event = equipment, session, event

    def __call__(self, message: dict[str, Any]) -> bool:
        if not isinstance(message.get("seq"), int):
            return False  # notifications are not history events
        if self.equipment and message.get("equipment_id") != self.equipment:
            return False
        if self.session and self.session not in (message.get("session_id"), message.get("forced_by")):
            return False
        return not self.event or message.get("event") == self.event


class AsyncSession:
    """A session: the client's presence, owner of its locks and queue places.

    Use it as ``async with lab.session(...) as s``: the block opens the
    session, keeps it alive, and ends it (releasing its locks and leaving
    its queues) when it ends, by an exception too.

    Attributes:
        id: the session id (set once the block has started).
        info: the server's answer to the creation.
    """

    def __init__(
        self,
        lab: AsyncLab,
        name: str,
        timeout: float | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        self.lab = lab
        self.name = name
        self._timeout = timeout
        self._metadata = metadata
        self.id: str = ""
        self.info: dict[str, Any] = {}
        self._feed: LiveFeed | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._locks: dict[str, AsyncLock] = {}
        self._groups: set[AsyncLockGroup] = set()
        self._cleanups: set[asyncio.Future[None]] = set()
        self._ended = False
        #: Why the session ended without this client ending it (``session_expired``,
        #: ``session_ended``), or ``None``.
        self.ended_by_server: str | None = None

    async def __aenter__(self) -> AsyncSession:
        body: dict[str, Any] = {"client_name": self.name}
        if self._timeout is not None:
            body["timeout_seconds"] = self._timeout
        if self._metadata is not None:
            body["metadata"] = self._metadata
        newest = await self.lab.newest_seq()
        self.info = await self.lab.request("POST", "/api/locks/sessions/create", json=body)
        self.id = self.info["session_id"]
        try:
            self._feed = LiveFeed(self.lab.ws_url, self.lab._headers, self._on_live, session_id=self.id, after=newest)
            await self._feed.start()
        except BaseException:
            await self._end()
            raise
        lease = float(self.info.get("timeout_seconds") or 0)
        if lease > 0:
            self._keepalive = asyncio.create_task(self._keep_alive(lease), name=f"lablink-session-{self.id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._end()
        except LabLinkError:
            if exc is None:
                raise
            log.warning("could not end session %s after an error", self.id, exc_info=True)

    @property
    def live_feed(self) -> LiveFeed | None:
        """The session's live event subscription (``reconnects``, ``last_seq``)."""
        return self._feed

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
    ) -> AsyncLockGroup:
        """A lock group (several instruments, all or nothing) or a pool (any
        one free instrument that fits), taken by ``async with`` and released,
        as a whole, when the block ends.

        Args:
            equipment_ids: the instruments, or a configured ``[[group]]``'s
                id (a string). May be empty with ``any_of``.
            any_of: a pool, taken with the others: ``{"tags": ["psu"]}``
                (every tag must fit), ``{"equipment_ids": [...]}``, or a list
                of instrument ids.
            on_position: called with ``(equipment_id, position)`` whenever
                the place in one member's queue changes while waiting (a
                group waits in every member's queue at once).

        The others are those of :meth:`lock`. The block's
        :class:`AsyncLockGroup` has every member's lock (``members``) and
        the ``group_id``. Losing any member loses the group: the server ends
        them all, and the next call raises
        :class:`~lablink.errors.LockLost`.
        """
        if isinstance(equipment_ids, str):
            named, ids = equipment_ids, []
        else:
            named, ids = None, list(equipment_ids)
        pool: AnyOf | None
        if any_of is None or isinstance(any_of, Mapping):
            pool = any_of
        else:
            pool = {"equipment_ids": list(any_of)}
        if named is None and not ids and not pool:
            raise ValueError("name the instruments, a configured group, or any_of")
        return AsyncLockGroup(
            self,
            named,
            ids,
            pool,
            wait,
            mode,
            timeout,
            on_position,
            on_lost,
            _Queueing(priority, max_wait, claim_within),
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
    ) -> AsyncLock: ...

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
    ) -> AsyncLockGroup: ...

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
    ) -> AsyncLock | AsyncLockGroup:
        """A lock on one instrument, taken by ``async with`` and released when the block ends.

        Given a list of instruments, a lock group: see :meth:`lock_group`
        (``on_position`` is then called with the highest of its positions: the
        group is served once it is first in every queue).

        Args:
            equipment_id: the instrument.
            wait: seconds to wait in the queue if it is busy. ``0`` (the
                default) does not wait: a busy instrument raises
                :class:`~lablink.errors.EquipmentLocked` at once. ``None``
                waits as long as it takes. A wait that runs out raises
                :class:`~lablink.errors.LockWaitTimeout` and leaves the queue.
            mode: ``"exclusive"`` (control and observe actions) or
                ``"observer"`` (observe actions only, shared).
            timeout: the lease in seconds (``None``: the server's default;
                ``0``: none). Renewed in the background while the block runs.
            on_position: called with the 1-based queue position whenever it
                changes while waiting.
            on_lost: called at once, with the :class:`~lablink.errors.LockLost`
                error, if the lock is lost (expired, force-released, revoked).
                Either way the next call on the lock raises it.
            priority: the queue priority, -10..10 (``None``: the server's 0);
                higher is served first. Above 0 needs an admin (or the
                role's cap) once authentication is on.
            max_wait: seconds after which the server drops the queue place
                (even if this client is gone): waiting then raises
                :class:`~lablink.errors.QueueTimeout`. ``wait`` is the
                client's own limit; this one is the server's.
            claim_within: seconds within which a lock handed over from the
                queue must be claimed (``None``: the server's default). The
                client claims it at once, so this frees the instrument early
                only if the client died while waiting.

        A lab manager removing the queue place (or ending the session) while
        it waits raises :class:`~lablink.errors.QueuePlaceLost`; the client
        does not queue again.
        """
        if not isinstance(equipment_id, str):
            report = on_position
            group = self.lock_group(
                equipment_id,
                wait=wait,
                mode=mode,
                timeout=timeout,
                on_lost=on_lost,
                priority=priority,
                max_wait=max_wait,
                claim_within=claim_within,
            )
            if report is not None:
                group._on_any_position = report
            return group
        return AsyncLock(
            self,
            equipment_id,
            wait,
            mode,
            timeout,
            on_position,
            on_lost,
            _Queueing(priority, max_wait, claim_within),
        )

    async def step_back(self, equipment_id: str) -> Trade:
        """Lets the waiter behind this session go first (call it while a
        ``lock`` of this session waits, from another task or thread)."""
        return await self.lab.step_back(equipment_id, self.id)

    async def swap(self, equipment_id: str, with_session_id: str) -> Trade:
        """Offers this session's place to swap with ``with_session_id``;
        done once that one asks too."""
        return await self.lab.swap(equipment_id, self.id, with_session_id)

    async def renew(self) -> None:
        """Renews the session now (the background task does this on its own)."""
        await self.lab.request("POST", f"/api/locks/sessions/{self.id}/activity")

    async def _keep_alive(self, lease: float) -> None:
        interval = lease * RENEW_AFTER
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
                interval = lease * RENEW_AFTER
            except ServerUnreachable:
                interval = min(RETRY_DELAY, lease * RENEW_AFTER)
            except SessionNotFound as e:
                self._gone("session_expired", e.detail)
                return
            except LabLinkError:
                log.warning("renewing session %s failed", self.id, exc_info=True)

    def _on_live(self, message: dict[str, Any]) -> None:
        equipment = message.get("equipment_id")
        group = next((g for g in self._groups if g._concerns(message)), None)
        if group is not None:
            group._on_live(message)
        elif isinstance(equipment, str) and equipment in self._locks:
            self._locks[equipment]._on_live(message)
        elif message.get("event") in ("session_expired", "session_ended") and message.get("session_id") == self.id:
            # Ended by a lab manager: `forced`, as the lock it held.
            reason = "forced" if message.get("reason") == "forced" else str(message["event"])
            self._gone(reason, f"the server recorded {message['event']}")

    def _gone(self, reason: str, detail: str) -> None:
        """The session ended without this client ending it: its held locks
        are lost, and a waiting lock stops waiting."""
        if self.ended_by_server is not None:
            return
        self.ended_by_server = reason
        for lk in [*self._locks.values(), *self._groups]:
            if lk._held:
                lk._lost_with(LockLost(f"session {self.id} ended ({reason}): {detail}", reason=reason))

    async def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._feed is not None:
            await self._feed.close()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self.id:
            try:
                await self.lab.request("DELETE", f"/api/locks/sessions/{self.id}")
            except SessionNotFound:
                pass  # it expired already: nothing left to end


class _Queueing:
    """What a lock request asks of the queue besides the lock."""

    def __init__(self, priority: int | None, max_wait: float | None, claim_within: float | None) -> None:
        self.priority, self.max_wait, self.claim_within = priority, max_wait, claim_within

    def fields(self) -> dict[str, Any]:
        """The acquire's fields, only those set (the server's defaults otherwise)."""
        named = {
            "priority": self.priority,
            "max_wait_seconds": self.max_wait,
            "claim_within_seconds": self.claim_within,
        }
        return {k: v for k, v in named.items() if v is not None}


class AsyncLock:
    """A held lock: run commands with it; it is renewed until its block ends.

    Attributes:
        equipment_id: the instrument.
        mode: ``"exclusive"`` or ``"observer"``.
        lock_id: the server's lock id (``lock_<equipment>_<token>``).
        fencing_token: this grant's fencing token, sent with every command.
        info: the server's lock object.
    """

    def __init__(
        self,
        session: AsyncSession,
        equipment_id: str,
        wait: float | None,
        mode: LockMode,
        timeout: float | None,
        on_position: PositionCallback | None,
        on_lost: LostCallback | None,
        queueing: _Queueing | None = None,
    ) -> None:
        if wait is not None and (wait < 0 or math.isnan(wait)):
            raise ValueError(f"wait must be a number of seconds >= 0 or None, got {wait!r}")
        self.session = session
        self.equipment_id = equipment_id
        self.mode = mode
        self._wait = wait
        self._timeout = timeout
        self._on_position = on_position
        self._on_lost = on_lost
        self.lock_id: str = ""
        self.fencing_token: int = 0
        self.info: dict[str, Any] = {}
        self._position: int | None = None
        self._lost: LockLost | None = None
        self._renew_now = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._held = False
        self._queueing = queueing or _Queueing(None, None, None)
        # The `queue_place_lost` notification, once the place is dropped.
        self._place_lost: dict[str, Any] | None = None
        #: How many times the lock was renewed (for logs and tests).
        self.renewals = 0

    @property
    def lost(self) -> LockLost | None:
        """Why the lock was lost, or ``None`` while it is held."""
        return self._lost

    @property
    def position(self) -> int | None:
        """The last queue position heard while waiting (``None`` if never queued)."""
        return self._position

    def check(self) -> None:
        """Raises :class:`~lablink.errors.LockLost` if the lock was lost."""
        if self._lost is not None:
            raise self._lost

    async def __aenter__(self) -> AsyncLock:
        if self.equipment_id in self.session._locks:
            raise RuntimeError(f"this session already has a lock block open on {self.equipment_id}")
        self.session._locks[self.equipment_id] = self
        try:
            await self._acquire()
        except BaseException:
            del self.session._locks[self.equipment_id]
            raise
        self._held = True
        lease = float(self.info.get("timeout_seconds") or 0)
        self._renewer = asyncio.create_task(self._renew(lease), name=f"lablink-renew-{self.lock_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False
        if self._renewer is not None:
            self._renewer.cancel()
        self.session._locks.pop(self.equipment_id, None)
        if self._lost is not None:
            return
        try:
            await self._release()
        except LabLinkError:
            if exc is None:
                raise
            log.warning("could not release %s after an error", self.equipment_id, exc_info=True)

    async def command(self, action: str, /, **params: Any) -> Any:
        """Runs ``action`` on the instrument with ``params``; returns its data.

        Sends this lock's session and fencing token. Raises
        :class:`~lablink.errors.LockLost` if the lock was lost (without
        sending anything when the client already knows), and the server's
        error class otherwise (``InvalidParameter``, ``UnknownAction``, ...).
        """
        self.check()
        try:
            return await self.session.lab.command(
                self.equipment_id,
                action,
                params,
                session_id=self.session.id,
                fencing_token=self.fencing_token,
            )
        except LockLost as e:
            e.equipment_id = self.equipment_id
            raise self._lost_with(e) from None

    async def renew(self) -> None:
        """Renews the lease now (the background task does this on its own)."""
        self.check()
        try:
            answer = await self.session.lab.request(
                "POST", f"/api/locks/activity/{self.equipment_id}", json={"session_id": self.session.id}
            )
        except LockLost as e:
            e.equipment_id = self.equipment_id
            raise self._lost_with(e) from None
        except (NoLock, NotLockHolder) as e:
            raise self._lost_with(LockLost(e.detail, status=e.status, body=e.body, reason="unknown")) from None
        self.renewals += 1
        if isinstance(answer, dict) and isinstance(answer.get("lock"), dict):
            self.info = answer["lock"]

    # -- acquiring ---------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        """The acquire's fields naming what it asks for, and for whom."""
        return {"equipment_id": self.equipment_id, "session_id": self.session.id, "lock_mode": self.mode}

    def _queued(self, answer: dict[str, Any]) -> None:
        """Notes the place(s) a queued answer gives."""
        entry = answer.get("queue_entry") or {}
        if isinstance(entry.get("position"), int):
            self._set_position(entry["position"])

    def _places(self) -> set[str]:
        """The instruments this request waits for."""
        return {self.equipment_id}

    async def _acquire(self) -> None:
        body = self._body()
        if self._timeout is not None:
            body["timeout_seconds"] = self._timeout
        body.update(self._queueing.fields())
        if self._wait == 0:
            answer = await self.session.lab.request("POST", "/api/locks/acquire", json=body)
            self._granted(answer)
            return
        deadline = None if self._wait is None else time.monotonic() + self._wait
        body["queue_if_busy"] = True
        try:
            while True:
                if self.session.ended_by_server is not None:
                    # Asking again would open a new session of the same id
                    # (implicit sessions): stop instead.
                    raise SessionNotFound(
                        f"session {self.session.id} ended while waiting for {self.equipment_id} "
                        f"({self.session.ended_by_server})"
                    )
                if self._place_lost is not None:
                    # Asking again would queue anew, at the back.
                    raise self._place_error(self._place_lost)
                left = MAX_WAIT_PER_REQUEST if deadline is None else deadline - time.monotonic()
                chunk = max(0.0, min(left, MAX_WAIT_PER_REQUEST))
                body["wait_seconds"] = round(chunk, 3)
                try:
                    answer = await self.session.lab.request(
                        "POST", "/api/locks/acquire", json=body, timeout=chunk + self.session.lab._timeout
                    )
                except ServerUnreachable:
                    # Restarting? The queue place survives restarts.
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                except QueuePlaceLost as e:  # the server's 409 queue_timeout
                    e.equipment_id = self.equipment_id
                    raise
                except (NotQueued, SessionNotFound):
                    # A waiter whose place was taken is answered `not_queued`
                    # (or, its session ended, `session_not_found`): its
                    # history says what happened.
                    found = await self._why_place_went()
                    if found is None:
                        raise
                    raise found from None
                if answer.get("status") in ("locked", "refreshed"):
                    self._granted(answer)
                    if self.info.get("claim_by"):
                        # Handed over from the queue with a claim window:
                        # claim it now (the answer itself is no claim).
                        await self.renew()
                    return
                self._queued(answer)
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockWaitTimeout(
                        f"waited {self._wait:g} s for {self.equipment_id} without getting it "
                        f"(still at position {self._position}); left the queue",
                        status=None,
                        body=answer,
                    )
        except BaseException:
            # Timed out, cancelled or failed: leave nothing behind (if the
            # lock came through meanwhile, this releases it). The session
            # waits for this before it ends, so the history reads in order.
            leaving = asyncio.ensure_future(self._leave_queue())
            self.session._cleanups.add(leaving)
            leaving.add_done_callback(self.session._cleanups.discard)
            await asyncio.shield(leaving)
            raise

    def _place_error(self, note: dict[str, Any]) -> QueuePlaceLost:
        """The error for a dropped place, from its notification or history event."""
        reason = str(note.get("reason") or "removed")
        by = note.get("user") or note.get("forced_by")
        said = note.get("message")
        if reason == "wait_timeout" or note.get("event") == "queue_timeout":
            return QueueTimeout(
                f"waited for {self.equipment_id} longer than max_wait: the server dropped the place",
                equipment_id=self.equipment_id,
                body=note,
            )
        what = "the session was ended" if reason == "forced" else "the place was removed"
        detail = f"lost the queue place for {self.equipment_id}: {what}" + (f" by {by}" if by else "")
        return QueuePlaceLost(
            detail + (f": {said}" if said else ""),
            reason=reason,
            equipment_id=self.equipment_id,
            message=str(said) if said else None,
            body=note,
        )

    async def _why_place_went(self) -> QueuePlaceLost | None:
        """Why the queue place went, from the session's latest event on this
        instrument (``None`` if it says nothing of it)."""
        if self._place_lost is not None:
            return self._place_error(self._place_lost)
        try:
            page = await self.session.lab.request(
                "GET", f"/api/locks/sessions/{self.session.id}/events", params={"limit": 50}
            )
        except LabLinkError:
            return None
        places = self._places()
        mine = [e for e in page.get("events", []) if e.get("equipment_id") in places]
        if mine and (mine[-1].get("event") == "queue_timeout" or mine[-1].get("reason") in ("removed", "forced")):
            return self._place_error(mine[-1])
        return None

    async def _leave_queue(self) -> None:
        try:
            await self._release()
        except LabLinkError as e:
            log.debug("leaving the queue of %s: %s", self.equipment_id, e)

    def _granted(self, answer: dict[str, Any]) -> None:
        self.info = answer["lock"]
        self.lock_id = self.info["lock_id"]
        self.fencing_token = int(self.info["fencing_token"])

    def _set_position(self, position: int) -> None:
        if position == self._position:
            return
        self._position = position
        if self._on_position is not None:
            try:
                self._on_position(position)
            except Exception:
                log.exception("on_position callback failed")

    # -- holding -----------------------------------------------------------

    def _on_live(self, message: dict[str, Any]) -> None:
        kind = message.get("event")
        if kind == "queue_position" and not self._held and isinstance(message.get("position"), int):
            self._set_position(message["position"])
        elif kind == "queue_place_lost" and not self._held:
            self._place_lost = message
        elif not self._held:
            return
        elif message.get("lock_id") not in (None, self.lock_id):
            return  # about an earlier lock of this session
        elif kind == "lock_expiring":
            self._renew_now.set()
        elif kind == "lock_lost" or (
            message.get("session_id") == self.session.id
            and (kind in _LOSS_EVENTS or (kind in _RELEASE_EVENTS and message.get("reason") in _LOSS_REASONS))
        ):
            reason = str(message.get("reason") or ("forced" if kind == "lock_force_released" else "timeout"))
            self._lost_with(
                LockLost(
                    f"lost the lock on {self.equipment_id} ({reason})",
                    reason=reason,
                    equipment_id=self.equipment_id,
                    body=message,
                )
            )

    def _lost_with(self, error: LockLost) -> LockLost:
        """Records the loss (the first one wins), stops renewing, tells ``on_lost``."""
        if self._lost is not None:
            return self._lost
        if error.equipment_id is None:
            error.equipment_id = self.equipment_id
        self._lost = error
        self._renew_now.set()  # the renewer sees the loss and ends
        if self._on_lost is not None:
            try:
                self._on_lost(error)
            except Exception:
                log.exception("on_lost callback failed")
        return error

    async def _renew(self, lease: float) -> None:
        # Renew a third of the way into each lease, so one failed attempt
        # still leaves time for another, and at once on `lock_expiring`.
        interval = lease * RENEW_AFTER if lease > 0 else None
        wait = interval
        while self._lost is None:
            try:
                await asyncio.wait_for(self._renew_now.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
            self._renew_now.clear()
            if self._lost is not None:
                return
            try:
                await self.renew()
                wait = interval
            except LockLost:
                return
            except ServerUnreachable:
                wait = RETRY_DELAY if interval is None else min(RETRY_DELAY, interval)
            except LabLinkError:
                log.warning("renewing the lock on %s failed", self.equipment_id, exc_info=True)

    async def _release(self) -> None:
        try:
            await self.session.lab.request(
                "POST", "/api/locks/release", json={"equipment_id": self.equipment_id, "session_id": self.session.id}
            )
        except (LockLost, NoLock, NotLockHolder):
            pass  # nothing of ours left to release


class GroupMember:
    """One instrument's lock in a lock group: its id, lock id and fencing token.

    Attributes:
        equipment_id: the instrument.
        lock_id: the server's lock id for it.
        fencing_token: its own fencing token, sent with its commands.
        info: the server's lock object.
    """

    def __init__(self, group: AsyncLockGroup, info: dict[str, Any]) -> None:
        self.group = group
        self.info = info
        self.equipment_id: str = info["equipment_id"]
        self.lock_id: str = info["lock_id"]
        self.fencing_token = int(info["fencing_token"])

    def __repr__(self) -> str:
        return f"GroupMember({self.equipment_id!r}, lock_id={self.lock_id!r}, fencing_token={self.fencing_token})"

    async def command(self, action: str, /, **params: Any) -> Any:
        """Runs ``action`` on this instrument with its fencing token; a lost
        group raises :class:`~lablink.errors.LockLost`, as for a lock."""
        group = self.group
        group.check()
        try:
            return await group.session.lab.command(
                self.equipment_id,
                action,
                params,
                session_id=group.session.id,
                fencing_token=self.fencing_token,
            )
        except LockLost as e:
            e.equipment_id = self.equipment_id
            raise group._lost_with(e) from None


class AsyncLockGroup(AsyncLock):
    """A held lock group or pool grant: every member's lock, renewed and
    released as one (see :meth:`AsyncSession.lock_group`).

    Attributes:
        group_id: the server's id for this request (release it by this).
        members: each instrument's :class:`GroupMember` (its ``lock_id`` and
            ``fencing_token``), by instrument id, in id order.
        positions: while waiting, the place in each member's queue.
        equipment_id: a label for messages (the configured group's id, or
            the instruments); ``equipment_ids`` lists the members.
    """

    def __init__(
        self,
        session: AsyncSession,
        named: str | None,
        equipment_ids: list[str],
        any_of: AnyOf | None,
        wait: float | None,
        mode: LockMode,
        timeout: float | None,
        on_position: GroupPositionCallback | None,
        on_lost: LostCallback | None,
        queueing: _Queueing,
    ) -> None:
        label = named or ", ".join(equipment_ids) or "a pool"
        super().__init__(session, label, wait, mode, timeout, None, on_lost, queueing)
        self._named = named
        self._ids = equipment_ids
        self._any_of = any_of
        self._on_group_position = on_position
        self._on_any_position: PositionCallback | None = None
        self.group_id: str = ""
        self.members: dict[str, GroupMember] = {}
        self.positions: dict[str, int] = {}
        #: Instruments this request holds or waits for, as far as heard.
        self._known: set[str] = set(equipment_ids)

    @property
    def equipment_ids(self) -> list[str]:
        """The members held, in id order."""
        return list(self.members)

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """Each member's fencing token."""
        return {eq: m.fencing_token for eq, m in self.members.items()}

    def __getitem__(self, equipment_id: str) -> GroupMember:
        return self.members[equipment_id]

    def _concerns(self, message: dict[str, Any]) -> bool:
        """Whether a live message is about this request."""
        group = message.get("group_id")
        if self.group_id and group == self.group_id:
            return True
        return group is None and message.get("equipment_id") in self._known and message.get("lock_id") in (
            None,
            *(m.lock_id for m in self.members.values()),
        )

    async def __aenter__(self) -> AsyncLockGroup:
        self.session._groups.add(self)
        try:
            await self._acquire()
        except BaseException:
            self.session._groups.discard(self)
            raise
        self._held = True
        lease = float(self.info.get("timeout_seconds") or 0)
        self._renewer = asyncio.create_task(self._renew(lease), name=f"lablink-renew-{self.group_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False
        if self._renewer is not None:
            self._renewer.cancel()
        self.session._groups.discard(self)
        if self._lost is not None:
            return
        try:
            await self._release()
        except LabLinkError:
            if exc is None:
                raise
            log.warning("could not release the lock group %s after an error", self.group_id, exc_info=True)

    async def command(self, action: str, /, **params: Any) -> Any:
        """Runs ``action`` on the only member (a pool's grant); with several,
        name it: ``group["psu1"].command(...)``."""
        self.check()
        if len(self.members) != 1:
            raise ValueError(f"this group holds {', '.join(self.members)}: use group[equipment_id].command(...)")
        return await next(iter(self.members.values())).command(action, **params)

    async def renew(self) -> None:
        """Renews every member now (the server renews a group as one)."""
        self.check()
        first = next(iter(self.members), None)
        if first is None:
            return
        try:
            await self.session.lab.request("POST", f"/api/locks/activity/{first}", json={"session_id": self.session.id})
        except LockLost as e:
            e.equipment_id = first
            raise self._lost_with(e) from None
        except (NoLock, NotLockHolder) as e:
            raise self._lost_with(LockLost(e.detail, status=e.status, body=e.body, reason="unknown")) from None
        self.renewals += 1

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"session_id": self.session.id, "lock_mode": self.mode}
        if self._named is not None:
            body["equipment_id"] = self._named
        if self._ids:
            body["equipment_ids"] = self._ids
        if self._any_of:
            body["any_of"] = dict(self._any_of)
        return body

    def _granted(self, answer: dict[str, Any]) -> None:
        self.group_id = str(answer.get("group_id") or self.group_id)
        locks = sorted(answer.get("locks") or [], key=lambda lock: str(lock["equipment_id"]))
        if not locks:
            raise UnexpectedResponse(f"expected a lock group from the server, got {answer!r}", status=None, body=answer)
        self.members = {lock["equipment_id"]: GroupMember(self, lock) for lock in locks}
        self._known = set(self.members)
        self.info = locks[0]
        self.lock_id = self.info["lock_id"]
        self.fencing_token = int(self.info["fencing_token"])

    def _queued(self, answer: dict[str, Any]) -> None:
        self.group_id = str(answer.get("group_id") or self.group_id)
        for entry in answer.get("queue_entries") or []:
            if isinstance(entry.get("position"), int):
                self._known.add(str(entry["equipment_id"]))
                self._set_member_position(str(entry["equipment_id"]), entry["position"])

    def _places(self) -> set[str]:
        return set(self._known)

    def _set_member_position(self, equipment_id: str, position: int) -> None:
        if self.positions.get(equipment_id) == position:
            return
        self.positions[equipment_id] = position
        if self._on_group_position is not None:
            try:
                self._on_group_position(equipment_id, position)
            except Exception:
                log.exception("on_position callback failed")
        self._set_position(max(self.positions.values()))

    def _set_position(self, position: int) -> None:
        if position == self._position:
            return
        self._position = position
        if self._on_any_position is not None:
            try:
                self._on_any_position(position)
            except Exception:
                log.exception("on_position callback failed")

    def _on_live(self, message: dict[str, Any]) -> None:
        kind = message.get("event")
        equipment = message.get("equipment_id")
        if kind == "queue_position" and not self._held and isinstance(message.get("position"), int):
            if isinstance(equipment, str):
                self._set_member_position(equipment, message["position"])
        elif kind == "queue_place_lost" and not self._held:
            self._place_lost = message
        elif not self._held or equipment not in self.members:
            return
        elif kind == "lock_expiring":
            self._renew_now.set()
        elif kind == "lock_lost" or (
            message.get("session_id") == self.session.id
            and (kind in _LOSS_EVENTS or (kind in _RELEASE_EVENTS and message.get("reason") in _LOSS_REASONS))
        ):
            reason = str(message.get("reason") or ("forced" if kind == "lock_force_released" else "timeout"))
            self._lost_with(
                LockLost(
                    f"lost the lock group {self.group_id}: {equipment} ({reason})",
                    reason=reason,
                    equipment_id=str(equipment),
                    body=message,
                )
            )

    async def _release(self) -> None:
        what: dict[str, Any]
        if self.group_id:
            what = {"group_id": self.group_id}
        elif self._named is not None:
            # Interrupted before the first answer: the way it was asked.
            what = {"equipment_id": self._named}
        elif self._ids:
            what = {"equipment_ids": self._ids}
        else:
            return  # a pool never answered: the session's end clears it
        try:
            await self.session.lab.request("POST", "/api/locks/release", json={**what, "session_id": self.session.id})
        except (LockLost, NoLock, NotLockHolder):
            pass  # nothing of ours left to release
