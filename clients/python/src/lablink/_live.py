"""One live-event subscription on ``/api/ws`` that outlives the connection.

The feed connects, subscribes and hands every message to a callback. When
the connection drops (a server restart closes it with code 1001, a network
error, or the server says the client ``lagged``) it reconnects with a short
backoff and subscribes again with ``resume_from`` set to the last ``seq`` it
delivered, so the server replays what was missed. Events are delivered
once each, in ``seq`` order: anything at or below the last delivered
``seq`` is dropped (the server does not repeat itself, but a replay that
overlaps what was already seen live must not reach the callback twice).
Notifications (``queue_position``, ``lock_granted``, ``lock_expiring``,
``lock_lost``) have no ``seq``; they are passed on as they come and are not
replayed after a reconnect.

Why not websockets' own ``async for ws in connect(...)`` reconnection: its
delays are set only through environment variables and start at up to
several seconds, and every reconnect has to subscribe again with a new
``resume_from`` anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .errors import BY_CODE, LabLinkError, ServerUnreachable

log = logging.getLogger("lablink")

#: Reconnection delays: first retry after this many seconds, doubling to the cap.
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 2.0


class LiveFeed:
    """Delivers the events matching one subscription to ``on_message``.

    ``after`` is the ``seq`` to resume after (events with a greater ``seq``
    are replayed first); ``None`` starts from the moment of subscribing.
    ``on_message`` runs in the event loop; it must not block.
    """

    def __init__(
        self,
        ws_url: str,
        headers: dict[str, str],
        on_message: Callable[[dict[str, Any]], None],
        *,
        equipment_ids: list[str] | None = None,
        session_id: str | None = None,
        all_events: bool = False,
        after: int | None = None,
    ) -> None:
        self._url = ws_url
        self._headers = headers
        self._on_message = on_message
        self._subscription: dict[str, Any] = {
            "type": "subscribe",
            "equipment_ids": equipment_ids or [],
            "session_id": session_id,
            "all": all_events,
        }
        #: The last ``seq`` delivered (or the one to resume after).
        self.last_seq: int | None = after
        #: How many times the feed has reconnected (for tests and logs).
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Connects and subscribes; returns once the server acknowledged.

        Raises :class:`~lablink.errors.ServerUnreachable` if the first
        connection fails (later ones are retried).
        """
        try:
            self._ws = await self._connect()
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as e:
            raise ServerUnreachable(f"cannot open the live event stream at {self._url}: {e}") from e
        self._task = asyncio.create_task(self._run(), name="lablink-live-feed")

    async def close(self) -> None:
        """Stops the feed and closes its connection."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _connect(self) -> ClientConnection:
        ws = await connect(self._url, additional_headers=self._headers, open_timeout=10)
        try:
            subscribe = dict(self._subscription)
            if self.last_seq is not None:
                subscribe["resume_from"] = self.last_seq
            await ws.send(json.dumps(subscribe))
            # The acknowledgement comes first; an error here means the
            # subscription itself was refused (a bad id).
            ack = json.loads(await ws.recv())
            if ack.get("type") == "error":
                cls = BY_CODE.get(str(ack.get("code")), LabLinkError)
                raise cls(str(ack.get("detail")), code=str(ack.get("code")), body=ack)
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _run(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        while not self._closed:
            ws = self._ws
            if ws is not None:
                try:
                    async for raw in ws:
                        delay = RECONNECT_FIRST_DELAY
                        if not self._deliver(json.loads(raw)):
                            break  # lagged: resume on a new connection
                except ConnectionClosed:
                    pass
                await ws.close()
                self._ws = None
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            try:
                self._ws = await self._connect()
                self.reconnects += 1
                log.info("live events: reconnected, resuming after seq %s", self.last_seq)
            except (OSError, InvalidHandshake, ConnectionClosed, asyncio.TimeoutError) as e:
                log.debug("live events: reconnect failed (%s); retrying", e)
            except LabLinkError as e:
                # The server refused the subscription it took before (it
                # changed underneath): retrying would not help.
                log.error("live events: the server refused to resubscribe: %s", e)
                return

    def _deliver(self, message: dict[str, Any]) -> bool:
        """Passes one message on; ``False`` when the connection must be renewed."""
        kind = message.get("type")
        if kind == "lagged":
            log.warning("live events: this client lagged; resuming after seq %s", self.last_seq)
            return False
        if kind == "subscribed":
            return True
        if kind == "error":
            log.warning("live events: the server said %s", message.get("detail"))
            return True
        seq = message.get("seq")
        if isinstance(seq, int):
            if self.last_seq is not None and seq <= self.last_seq:
                return True
            self.last_seq = seq
        try:
            self._on_message(message)
        except Exception:
            log.exception("live events: a handler failed on %s", message)
        return True
