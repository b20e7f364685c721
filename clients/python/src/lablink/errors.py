"""Typed exceptions: one class per error code the LabLink server answers.

Every server error is JSON ``{"detail": ..., "code": ...}``; the client
raises the class registered for ``code`` (see :data:`BY_CODE`), carrying the
server's ``code``, ``detail`` and HTTP ``status``. A code this version does
not know still raises :class:`LabLinkError` with that code, so newer servers
never break older clients. A few classes are the client's own
(:class:`ServerUnreachable`, :class:`LockWaitTimeout`,
:class:`UnexpectedResponse`); they say so in their docstring.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "BY_CODE",
    "LabLinkError",
    "ServerUnreachable",
    "UnexpectedResponse",
    "LockWaitTimeout",
    "QueuePlaceLost",
    "error_from_body",
    "lost_reason",
]


class LabLinkError(Exception):
    """Base class of every error this package raises.

    Attributes:
        code: the server's snake_case error code (or the client's own, for
            client-side errors).
        detail: the server's explanation: what happened and what to do.
        status: the HTTP status, when the error came in an HTTP answer.
        body: the whole JSON error body, when there was one.
    """

    code: str = "error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.status = status
        self.body = body

    def __str__(self) -> str:
        return f"{self.detail} [{self.code}]"


# 400
class UnknownAction(LabLinkError):
    """The instrument has no such action (the detail lists the valid ones)."""

    code = "unknown_action"


class InvalidPath(LabLinkError):
    """A path parameter is not valid."""

    code = "invalid_path"


class UnreadableBody(LabLinkError):
    """The request body could not be read."""

    code = "unreadable_body"


class WebsocketRequired(LabLinkError):
    """A plain request was sent to the WebSocket endpoint."""

    code = "websocket_required"


class BadRequest(LabLinkError):
    """The request was not valid HTTP/1.1."""

    code = "bad_request"


# 401
class SessionRequired(LabLinkError):
    """A command without a session while locks are on."""

    code = "session_required"


class Unauthenticated(LabLinkError):
    """No (usable) credentials: pass ``token=`` to :class:`~lablink.Lab`."""

    code = "unauthenticated"


class InvalidToken(LabLinkError):
    """The API token is unknown or revoked."""

    code = "invalid_token"


# 403
class Forbidden(LabLinkError):
    """The authentication rules forbid this (another user's session, a force
    release without the admin role, an allow list, ...)."""

    code = "forbidden"


class NotLockHolder(LabLinkError):
    """Another session holds the lock (the detail names it)."""

    code = "not_lock_holder"


# Reason codes the server uses for a lost lock, and the words its error
# details use for each (src/domain/mod.rs, `reason_text`), longest first so
# that no phrase matches inside a longer one.
_REASON_TEXTS = (
    ("force-released by another session", "forced"),
    ("revoked for an exclusive lock", "exclusive_granted"),
    ("its session is no longer live", "session_not_live"),
    ("its session expired", "session_expired"),
    ("its session ended", "session_ended"),
    ("its lease expired", "timeout"),
    ("upgraded to exclusive", "upgraded"),
)


def lost_reason(detail: str) -> str:
    """The reason code (``forced``, ``timeout``, ``session_expired``, ...)
    named in a ``lock_lost`` error's detail, or ``"unknown"``."""
    for text, reason in _REASON_TEXTS:
        if text in detail:
            return reason
    return "unknown"


class LockLost(LabLinkError):
    """Your lock ended without you releasing it: stop using the instrument.

    Raised by the next call on a lock after the server told the client it
    was lost (live ``lock_lost`` event), and by any call the server refuses
    with code ``lock_lost``.

    Attributes:
        reason: why, as the server's reason code: ``forced`` (an admin
            force-released it), ``timeout`` (the lease expired),
            ``exclusive_granted`` (an observer lock revoked for an exclusive
            one), ``session_expired``, ``session_ended``, ... or
            ``unknown``.
        equipment_id: the instrument, when known.
    """

    code = "lock_lost"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        reason: str | None = None,
        equipment_id: str | None = None,
    ) -> None:
        super().__init__(detail, code=code, status=status, body=body)
        self.reason = reason if reason is not None else lost_reason(detail)
        self.equipment_id = equipment_id


class SessionNotLive(LabLinkError):
    """The session named has ended or expired."""

    code = "session_not_live"


class ObserverModeDisabled(LabLinkError):
    """The server refuses observer locks (``LABLINK_ENABLE_OBSERVER_MODE=false``)."""

    code = "observer_mode_disabled"


# 404
class SessionNotFound(LabLinkError):
    """No live session with that id."""

    code = "session_not_found"


class EquipmentNotFound(LabLinkError):
    """No instrument with that id."""

    code = "equipment_not_found"


class NoLock(LabLinkError):
    """The session holds no lock on that instrument."""

    code = "no_lock"


class NotLocked(LabLinkError):
    """The instrument is not locked (nothing to force-release)."""

    code = "not_locked"


class NotQueued(LabLinkError):
    """The session does not wait in that queue."""

    code = "not_queued"


class NotInMaintenance(LabLinkError):
    """The instrument is not in maintenance: nothing to end."""

    code = "not_in_maintenance"


class NotFound(LabLinkError):
    """No such route (a client and server of different versions?)."""

    code = "not_found"


# 405
class MethodNotAllowed(LabLinkError):
    """The route does not take that HTTP method."""

    code = "method_not_allowed"


# 409
class EquipmentLocked(LabLinkError):
    """The instrument is busy (the detail names the holder).

    Raised at once by ``lock(..., wait=0)``, and (as its subclass
    :class:`LockWaitTimeout`) when a wait runs out.
    """

    code = "equipment_locked"


class QueueDisabled(LabLinkError):
    """The server does not queue (``LABLINK_ENABLE_LOCK_QUEUE=false``): ``wait`` needs the queue."""

    code = "queue_disabled"


class InMaintenance(LabLinkError):
    """The instrument is out of service (maintenance); ask to queue to wait for it."""

    code = "in_maintenance"


class QueuePlaceLost(LabLinkError):
    """Client-side: a waiting lock's queue place was dropped without the
    client asking, so the lock block never ran and the client does not
    queue again (that would go to the back, undoing what was decided).

    Raised by ``lock(..., wait=...)`` when a lab manager removed the place
    (``reason == "removed"``) or ended the session (``"forced"``); its
    subclass :class:`QueueTimeout` when ``max_wait`` passed.

    Attributes:
        reason: ``removed``, ``forced`` or ``wait_timeout``.
        equipment_id: the instrument, when known.
        message: what the lab manager said, if anything.
    """

    code = "queue_place_lost"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        reason: str | None = None,
        equipment_id: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(detail, code=code, status=status, body=body)
        self.reason = reason if reason is not None else self._default_reason
        self.equipment_id = equipment_id
        self.message = message

    _default_reason = "removed"


class QueueTimeout(QueuePlaceLost):
    """The queue place was dropped: its ``max_wait_seconds`` passed (the
    server's 409, or the client told so while waiting)."""

    code = "queue_timeout"
    _default_reason = "wait_timeout"


class CannotTrade(LabLinkError):
    """A queue place cannot be traded that way (last place, or with itself)."""

    code = "cannot_trade"


class GroupConflict(LabLinkError):
    """A lock group or pool names an instrument the session already holds or waits for."""

    code = "group_conflict"


class StaleFencingToken(LabLinkError):
    """The fencing token is older than the current grant (or was never issued)."""

    code = "stale_fencing_token"


class InstrumentRejected(LabLinkError):
    """The instrument's state forbids the command."""

    code = "instrument_rejected"


# 413, 414, 431
class BodyTooLarge(LabLinkError):
    """The request body is over 1 MiB."""

    code = "body_too_large"


class UriTooLong(LabLinkError):
    """The URL is over 64 KiB."""

    code = "uri_too_long"


class HeadersTooLarge(LabLinkError):
    """The request headers are too large or too many."""

    code = "headers_too_large"


# 422
class InvalidJson(LabLinkError):
    """The body is not valid JSON."""

    code = "invalid_json"


class InvalidBody(LabLinkError):
    """A body field has the wrong type or is missing."""

    code = "invalid_body"


class InvalidParameter(LabLinkError):
    """A value is out of range (an instrument parameter, ``wait_seconds``, a query parameter)."""

    code = "invalid_parameter"


class InvalidTimeout(LabLinkError):
    """A timeout that is not a number of seconds from 0 to 10**9 (or under 1 ms)."""

    code = "invalid_timeout"


class InvalidTimestamp(LabLinkError):
    """``since``/``until`` is not an RFC 3339 timestamp."""

    code = "invalid_timestamp"


class InvalidId(LabLinkError):
    """An id that is empty, too long, or holds whitespace or control characters."""

    code = "invalid_id"


class EquipmentMismatch(LabLinkError):
    """The body's ``equipment_id`` differs from the path's."""

    code = "equipment_mismatch"


class InvalidRequest(LabLinkError):
    """The request is invalid in another way (the detail says how)."""

    code = "invalid_request"


# 500, 502, 503, 504
class InternalError(LabLinkError):
    """The server could not read its stored data (the cause is in its log)."""

    code = "internal_error"


class InstrumentError(LabLinkError):
    """The instrument answered with an error (its own text is in the detail)."""

    code = "instrument_error"


class InstrumentUnavailable(LabLinkError):
    """The instrument cannot be reached."""

    code = "instrument_unavailable"


class StoreUnavailable(LabLinkError):
    """The server's store failed (disk full, read-only, locked); nothing was applied."""

    code = "store_unavailable"


class InstrumentTimeout(LabLinkError):
    """The instrument did not answer in time; a control action may have been applied."""

    code = "instrument_timeout"


# WebSocket error messages
class InvalidMessage(LabLinkError):
    """The server did not understand a WebSocket message."""

    code = "invalid_message"


class HistoryUnavailable(LabLinkError):
    """The server could not replay the history on a WebSocket."""

    code = "history_unavailable"


# The client's own
class ServerUnreachable(LabLinkError):
    """Client-side: the server could not be reached (not running, wrong URL,
    network down). Not a server code."""

    code = "server_unreachable"


class UnexpectedResponse(LabLinkError):
    """Client-side: an answer that is not LabLink's JSON (a proxy's error
    page, another service on that port)."""

    code = "unexpected_response"


class LockWaitTimeout(EquipmentLocked):
    """Client-side: ``lock(..., wait=N)`` waited N seconds without getting
    the lock. The queue place has been given up. A subclass of
    :class:`EquipmentLocked`, so one ``except`` covers busy and timed out."""


#: The class for each server error code.
BY_CODE: dict[str, type[LabLinkError]] = {
    cls.code: cls
    for cls in (
        UnknownAction,
        InvalidPath,
        UnreadableBody,
        WebsocketRequired,
        BadRequest,
        SessionRequired,
        Unauthenticated,
        InvalidToken,
        Forbidden,
        NotLockHolder,
        LockLost,
        SessionNotLive,
        ObserverModeDisabled,
        SessionNotFound,
        EquipmentNotFound,
        NoLock,
        NotLocked,
        NotQueued,
        NotInMaintenance,
        NotFound,
        MethodNotAllowed,
        EquipmentLocked,
        QueueDisabled,
        InMaintenance,
        QueueTimeout,
        CannotTrade,
        GroupConflict,
        StaleFencingToken,
        InstrumentRejected,
        BodyTooLarge,
        UriTooLong,
        HeadersTooLarge,
        InvalidJson,
        InvalidBody,
        InvalidParameter,
        InvalidTimeout,
        InvalidTimestamp,
        InvalidId,
        EquipmentMismatch,
        InvalidRequest,
        InternalError,
        InstrumentError,
        InstrumentUnavailable,
        StoreUnavailable,
        InstrumentTimeout,
        InvalidMessage,
        HistoryUnavailable,
    )
}


def error_from_body(status: int | None, text: str) -> LabLinkError:
    """The exception for an error answer: ``text`` is its body."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        shown = text if len(text) <= 200 else text[:200] + "..."
        return UnexpectedResponse(
            f"the server answered {status} without a LabLink error body: {shown!r}",
            status=status,
        )
    code: str = body["code"]
    detail = str(body.get("detail") or body.get("error") or code)
    cls = BY_CODE.get(code, LabLinkError)
    return cls(detail, code=code, status=status, body=body)
