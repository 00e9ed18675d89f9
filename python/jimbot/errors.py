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
anything else            :class:`JimbotError`
=======================  ==============================

The original :class:`grpc.aio.AioRpcError`, where there is one, is chained
as ``__cause__``.
"""

import grpc

__all__ = ["JimbotError", "InvalidArgumentError", "BackpressureError", "UnavailableError",
           "NotFoundError", "DeadlineExceededError", "UnknownTypeError", "ClosedError",
           "from_rpc_error"]


class JimbotError(Exception):
    """Base class of every client error.

    ``code`` is the :class:`grpc.StatusCode` when the error came from the
    daemon, else ``None``; ``details`` is the daemon's (or the client's)
    one-line reason.
    """

    code = None

    def __init__(self, details: str = "", *, code=None):
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code


class InvalidArgumentError(JimbotError, ValueError):
    """The request was refused as malformed and changed nothing (bad topic or
    pattern, oversized event, unknown group...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class BackpressureError(JimbotError):
    """The bus kept refusing a publish for lack of room until the client's
    deadline passed. ``retry_after_ms`` is the bus's last hint (or None)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, details: str = "", *, code=None, retry_after_ms=None):
        super().__init__(details, code=code)
        self.retry_after_ms = retry_after_ms


class UnavailableError(JimbotError, ConnectionError):
    """The daemon could not be reached, or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class NotFoundError(JimbotError, LookupError):
    """The named object (a consumer group, say) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class DeadlineExceededError(JimbotError, TimeoutError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnknownTypeError(JimbotError, LookupError):
    """``Event.message()`` found no protobuf message type of the event's
    ``type`` in the descriptor pool (import the module that defines it)."""


class ClosedError(JimbotError, RuntimeError):
    """The client was used after ``close()``."""


_BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, BackpressureError, UnavailableError,
                                      NotFoundError, DeadlineExceededError)}


def from_rpc_error(err: grpc.RpcError) -> JimbotError:
    """The :class:`JimbotError` subclass for a gRPC error (not raised here).

    Use as ``raise from_rpc_error(e) from e``.
    """
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    cls = _BY_CODE.get(code, JimbotError)
    return cls(f"{code.name if code else 'error'}: {details or ''}".rstrip(": "), code=code)
