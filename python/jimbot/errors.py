"""Exceptions raised by the jimbot client.

Every error the client raises derives from :class:`JimbotError`. Errors that
come from the daemon map from their gRPC status code:

=======================  ==============================
gRPC status              exception
=======================  ==============================
``INVALID_ARGUMENT``     :class:`InvalidArgumentError`
``RESOURCE_EXHAUSTED``   :class:`BackpressureError` (after the client's retries)
``UNAVAILABLE``          :class:`UnavailableError`
``NOT_FOUND``            :class:`NotFoundError`
``DEADLINE_EXCEEDED``    :class:`DeadlineExceededError`
``ALREADY_EXISTS``       :class:`AlreadyExistsError`
``FAILED_PRECONDITION``  :class:`FailedPreconditionError`
anything else            :class:`JimbotError`
=======================  ==============================

A ``retry-after-ms`` trailer (the daemon sends one with RESOURCE_EXHAUSTED
and with UNAVAILABLE "shutting down") is kept as ``retry_after_ms``; a
``jimbot-error`` trailer (the request queues' reason: ``no-worker``,
``queue-full``, ``rate-limited``, ``poisoned``) as ``reason``, and two of
its values choose a class of their own: ``rate-limited`` (with
RESOURCE_EXHAUSTED) is :class:`RateLimitedError`, ``poisoned`` (with
ABORTED) is :class:`PoisonedRequestError`.

Four errors come from answers, not from status codes:
:class:`RateLimitedError` (``AcquireApiQuota`` answered ``granted: false``),
:class:`LeaseExpiredError` (a GPU lease reached its end),
:class:`LeaseLostError` (a GPU lease ended otherwise before its release) and
:class:`WorkerError` (a queue's worker answered with an error text).

The original :class:`grpc.aio.AioRpcError`, where there is one, is chained
as ``__cause__``.
"""

import grpc

__all__ = ["JimbotError", "InvalidArgumentError", "BackpressureError", "UnavailableError",
           "NotFoundError", "DeadlineExceededError", "AlreadyExistsError", "FailedPreconditionError",
           "UnknownTypeError",
           "ClosedError", "RateLimitedError", "LeaseExpiredError", "LeaseLostError",
           "WorkerError", "PoisonedRequestError", "from_rpc_error", "RETRY_AFTER_KEY",
           "REASON_KEY"]

#: Metadata key of the daemon's retry hint (RESOURCE_EXHAUSTED, UNAVAILABLE at shutdown).
RETRY_AFTER_KEY = "retry-after-ms"
#: Metadata key of the daemon's machine-readable reason (the request queues).
REASON_KEY = "jimbot-error"


class JimbotError(Exception):
    """Base class of every client error.

    ``code`` is the :class:`grpc.StatusCode` when the error came from the
    daemon, else ``None``; ``details`` is the daemon's (or the client's)
    one-line reason.
    """

    code = None
    #: The daemon's retry hint in milliseconds (trailer ``retry-after-ms``), or None.
    retry_after_ms = None
    #: The daemon's reason word (trailer ``jimbot-error``: "no-worker",
    #: "queue-full", "rate-limited", "poisoned"), or None.
    reason = None

    def __init__(self, details: str = "", *, code=None, retry_after_ms=None, reason=None):
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code
        if retry_after_ms is not None:
            self.retry_after_ms = retry_after_ms
        if reason is not None:
            self.reason = reason


class InvalidArgumentError(JimbotError, ValueError):
    """The request was refused as malformed and changed nothing (bad topic or
    pattern, oversized event, unknown group...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class BackpressureError(JimbotError):
    """The bus kept refusing a publish for lack of room until the client's
    deadline passed, or (``reason`` "queue-full") a request queue holds
    ``max_depth`` waiting requests already, or too many wait for the GPU or
    the budget. ``retry_after_ms`` is the daemon's last hint (or None)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(JimbotError, ConnectionError):
    """The daemon could not be reached, or is shutting down; or (``reason``
    "no-worker") no worker takes the queue a request was submitted to."""

    code = grpc.StatusCode.UNAVAILABLE


class NotFoundError(JimbotError, LookupError):
    """The named object (a consumer group, say) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class DeadlineExceededError(JimbotError, TimeoutError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class AlreadyExistsError(JimbotError):
    """The object exists already (a GPU lease that a live stream holds still,
    when another stream tries to re-attach to it)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(JimbotError):
    """The daemon is not in a state to answer the call: ``GetRedisAccess``
    while no Redis is configured (``resource_coordinator.redis.url`` empty),
    or deleting a consumer group that still has members."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class RateLimitedError(JimbotError):
    """``Infrastructure.api_quota`` was not granted: the budget's window (or
    the component's share) has not enough left, also after ``wait``; or a
    request submitted to a queue paced by the budget could not get a unit of
    it before its deadline (RESOURCE_EXHAUSTED, ``reason`` "rate-limited").

    ``retry_after`` is the daemon's estimate, in seconds, of when enough
    frees up (``retry_after_ms`` the same in ms); ``remaining`` and
    ``limit`` are the window's figures (0 for a queue's refusal). For
    ``api_quota`` not a gRPC error: the daemon answers OK with
    ``granted: false``."""

    def __init__(self, details: str = "", *, retry_after_ms: int = 0, remaining: int = 0,
                 limit: int = 0, code=None, reason=None):
        super().__init__(details, retry_after_ms=retry_after_ms, code=code, reason=reason)
        self.retry_after = retry_after_ms / 1000.0
        self.remaining = remaining
        self.limit = limit


class LeaseExpiredError(JimbotError):
    """A GPU lease reached its expiry (``max_allocation_seconds`` or the
    ``seconds`` asked for) before it was released; the daemon ended its
    stream with DEADLINE_EXCEEDED "lease expired"."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class LeaseLostError(JimbotError):
    """A GPU lease ended before its release for another reason than its
    expiry: the daemon forgot it (NOT_FOUND on re-attach) or stayed
    unreachable longer than the client's ``reattach_s``."""


class WorkerError(JimbotError):
    """The worker that took a queued request could not answer it: it
    answered with an error text (the daemon's status was OK and nothing was
    cached). ``text`` is the worker's text as it sent it, ``request_id`` the
    submit's id; ``details`` says both."""

    def __init__(self, details: str = "", *, request_id: str = "", text: str = ""):
        super().__init__(details)
        self.request_id = request_id
        self.text = text or details


class PoisonedRequestError(JimbotError):
    """A queued request was handed to ``max_deliveries`` workers that all
    went away without answering; the daemon keeps it aside and answers
    ABORTED (``reason`` "poisoned") instead of retrying it again."""

    code = grpc.StatusCode.ABORTED


class UnknownTypeError(JimbotError, LookupError):
    """``Event.message()`` found no protobuf message type of the event's
    ``type`` in the descriptor pool (import the module that defines it)."""


class ClosedError(JimbotError, RuntimeError):
    """The client was used after ``close()``."""


_BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, BackpressureError, UnavailableError,
                                      NotFoundError, DeadlineExceededError, AlreadyExistsError,
                                      FailedPreconditionError)}


def from_rpc_error(err: grpc.RpcError) -> JimbotError:
    """The :class:`JimbotError` subclass for a gRPC error (not raised here).

    Use as ``raise from_rpc_error(e) from e``.
    """
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    text = f"{code.name if code else 'error'}: {details or ''}".rstrip(": ")
    why, retry = reason(err), retry_after_ms(err)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and why == "rate-limited":
        return RateLimitedError(text, retry_after_ms=retry or 0, code=code, reason=why)
    cls = _BY_CODE.get(code, JimbotError)
    if code == grpc.StatusCode.ABORTED and why == "poisoned":
        cls = PoisonedRequestError
    return cls(text, code=code, retry_after_ms=retry, reason=why)


def _trailer(err: grpc.RpcError, name: str):
    md = None
    if callable(getattr(err, "trailing_metadata", None)):
        try:
            md = err.trailing_metadata()
        except Exception:  # noqa: BLE001: a synthetic error may have none
            md = None
    for key, value in md or ():
        if key == name:
            return value.decode() if isinstance(value, bytes) else value
    return None


def retry_after_ms(err: grpc.RpcError):
    """The ``retry-after-ms`` trailer of a gRPC error as an int, or None."""
    value = _trailer(err, RETRY_AFTER_KEY)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def reason(err: grpc.RpcError):
    """The ``jimbot-error`` trailer of a gRPC error (a word), or None."""
    return _trailer(err, REASON_KEY)
