"""The request queues' client side: what a submitter gets back and what a
worker is handed, shared by :class:`jimbot.Infrastructure` and
:class:`jimbot.testing.MockInfrastructure`.

::

    # A component asks and waits for the answer:
    advice = await infra.submit("claude", StrategyRequest(question="buy?"), timeout=20)

    # A worker (the process that holds the API key) answers:
    async with infra.take("claude", worker="claude-1") as requests:   # registered here
        async for req in requests:
            try:
                await req.respond(await ask_the_model(req.message))
            except ModelError as e:
                await req.fail(str(e))

Design notes:

* A payload travels as ``type`` (the protobuf full name) and ``payload``
  (its bytes), as on the bus. Both sides decode lazily with
  :func:`jimbot.message_class`, so a type of your own is found once its
  ``_pb2`` module is imported; a submitter may name the class instead
  (``response_type=``).
* :class:`QueueResponse` is what ``submit_detailed`` returns: the message
  with ``cached`` and ``request_id``. A worker's error text never becomes a
  response: it is raised as :class:`~jimbot.errors.WorkerError`.
* :class:`QueueRequest` is one request handed to a worker; its
  ``respond``/``fail`` go through an ``answer`` callable of the client that
  made it, so the real client and the mock share the class.
* The daemon's limits (include/jimbot/coord.h) are checked here so that the
  mock refuses what jimbotd refuses; the real client lets the daemon check.

Everything here runs on the caller's event loop; nothing is thread-safe.
"""

import math
from typing import Awaitable, Callable, Optional, Tuple, Union

from google.protobuf import message as pb_message

from .errors import InvalidArgumentError, WorkerError
from .event_bus import decode_message
from .infra.v1 import infrastructure_pb2 as pb

__all__ = ["QueueRequest", "QueueResponse", "encode_payload", "timeout_ms", "make_request",
           "take_request",
           "MAX_QUEUE_BYTES", "MAX_REQUEST_ID_BYTES", "MAX_TYPE_BYTES", "MAX_SUBMITTER_BYTES",
           "MAX_OUTSTANDING"]

#: The daemon's limits on a request (include/jimbot/coord.h, TakeRequests).
MAX_QUEUE_BYTES = 64
MAX_REQUEST_ID_BYTES = 128
MAX_TYPE_BYTES = 256
MAX_SUBMITTER_BYTES = 128
MAX_OUTSTANDING = 1000
_UINT32_MAX = (1 << 32) - 1


def encode_payload(msg: Union[pb_message.Message, bytes], type: Optional[str]) -> Tuple[str, bytes]:
    """``(type, payload)`` for a message (its full name unless ``type`` is
    given) or for bytes (``type`` required, "" allowed). TypeError for
    anything else."""
    if isinstance(msg, pb_message.Message):
        return (msg.DESCRIPTOR.full_name if type is None else type), msg.SerializeToString()
    if isinstance(msg, (bytes, bytearray, memoryview)):
        if type is None:
            raise TypeError("a raw bytes payload needs an explicit type=")
        return type, bytes(msg)
    raise TypeError(f"a queue takes a protobuf message or bytes, not {msg.__class__.__name__}")


def timeout_ms(timeout: Optional[float]) -> int:
    """The request's ``timeout_ms`` for ``timeout`` seconds (None: 0, the
    queue's own); InvalidArgumentError unless positive and within 32 bits."""
    if timeout is None:
        return 0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, "
                                   f"not {timeout!r}")
    ms = max(1, math.ceil(timeout * 1000))
    if ms > _UINT32_MAX:
        raise InvalidArgumentError(f"timeout of {timeout}s does not fit in 32 bits of ms")
    return ms


def _int32(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 31) <= value < (1 << 31):
        raise InvalidArgumentError(f"{name} must be a 32-bit integer, not {value!r}")
    return value


def _text(name: str, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string, not {value!r}")
    return value


def make_request(queue: str, msg, *, type: Optional[str] = None,
                 timeout: Optional[float] = None, priority: int = 0, bypass_cache: bool = False,
                 request_id: Optional[str] = None,
                 component: Optional[str] = None) -> pb.QueuedRequest:
    """The ``QueuedRequest`` a submit sends (see
    :meth:`jimbot.Infrastructure.submit`). Raises InvalidArgumentError for
    values the message cannot carry and TypeError for a payload that is
    neither a message nor bytes; the daemon checks lengths and names."""
    rtype, payload = encode_payload(msg, type)
    return pb.QueuedRequest(queue=_text("queue", queue), type=rtype, payload=payload,
                            priority=_int32("priority", priority),
                            timeout_ms=timeout_ms(timeout), bypass_cache=bool(bypass_cache),
                            request_id=_text("request_id", request_id),
                            submitter=_text("component", component))


def take_request(queue: str, max_outstanding: int = 1,
                 worker: Optional[str] = None) -> pb.TakeRequestsRequest:
    """The ``TakeRequestsRequest`` of :meth:`jimbot.Infrastructure.take`."""
    if (isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int)
            or not 0 <= max_outstanding <= MAX_OUTSTANDING):
        raise InvalidArgumentError(f"max_outstanding must be an integer from 0 to "
                                   f"{MAX_OUTSTANDING}, not {max_outstanding!r}")
    return pb.TakeRequestsRequest(queue=_text("queue", queue), max_outstanding=max_outstanding,
                                  worker=_text("worker", worker))


def _decode(type_name: str, payload: bytes, cls):
    if cls is not None:
        return cls.FromString(payload)
    if not type_name:
        return payload
    return decode_message(type_name, payload)


class QueueResponse:
    """A worker's answer to a submit, as ``submit_detailed`` returns it.

    ``request_id`` (the submit's own id, also when it was coalesced with an
    equal request or answered from the cache), ``type`` and ``payload`` (as
    the worker sent them), ``cached`` (answered from the daemon's cache: no
    worker, no budget), and ``message``: the payload decoded, by
    ``response_type`` when the submitter named one, else by ``type``
    (:class:`~jimbot.errors.UnknownTypeError` for a type no imported module
    defines); the raw bytes when the type is "" and no class was named.
    """

    __slots__ = ("request_id", "type", "payload", "cached", "_cls", "_decoded")

    def __init__(self, request_id: str, type: str, payload: bytes, cached: bool,
                 response_type=None):
        self.request_id = request_id
        self.type = type
        self.payload = payload
        self.cached = cached
        self._cls = response_type
        self._decoded = None

    @property
    def message(self):
        """The decoded payload (decoded once)."""
        if self._decoded is None:
            self._decoded = _decode(self.type, self.payload, self._cls)
        return self._decoded

    @classmethod
    def from_wire(cls, resp, response_type=None) -> "QueueResponse":
        """From a ``QueuedResponse``; raises :class:`~jimbot.errors.WorkerError`
        when it carries an error text."""
        if resp.error:
            raise WorkerError(f"the worker could not answer request {resp.request_id}: "
                              f"{resp.error}", request_id=resp.request_id, text=resp.error)
        return cls(resp.request_id, resp.type, resp.payload, resp.cached, response_type)

    def __repr__(self) -> str:
        return (f"QueueResponse(request_id={self.request_id!r}, type={self.type!r}, "
                f"cached={self.cached}, {len(self.payload)} bytes)")


Answer = Callable[["QueueRequest", str, bytes, str], Awaitable[None]]


class QueueRequest:
    """One request handed to a worker (``async for req in infra.take(...)``).

    ``request`` is the ``jimbot.infra.v1.QueuedRequest`` as received;
    ``request_id``, ``queue``, ``type``, ``payload``, ``priority``,
    ``submitter`` (the submitting component, else its address),
    ``enqueued_ms`` (wall clock), ``timeout_ms`` (left before the last
    submitter's deadline when it was handed out) and ``delivery_count`` (1
    the first time; more when workers went away without answering) are its
    fields; ``message`` is the payload decoded by ``type``. ``answered`` is
    True once :meth:`respond` or :meth:`fail` succeeded.
    """

    __slots__ = ("request", "answered", "_answer", "_decoded")

    def __init__(self, request, answer: Answer):
        self.request = request
        self.answered = False
        self._answer = answer
        self._decoded = None

    request_id = property(lambda self: self.request.request_id, doc="Answer with this id.")
    queue = property(lambda self: self.request.queue, doc="The queue it came from.")
    type = property(lambda self: self.request.type, doc="The payload's type name.")
    payload = property(lambda self: self.request.payload, doc="The serialized payload (bytes).")
    priority = property(lambda self: self.request.priority, doc="Higher first.")
    submitter = property(lambda self: self.request.submitter,
                         doc="The submitting component (or its address).")
    enqueued_ms = property(lambda self: self.request.enqueued_ms,
                           doc="When it was queued, ms since the epoch.")
    timeout_ms = property(lambda self: self.request.timeout_ms,
                          doc="Left before its last submitter gives up, when handed out.")
    delivery_count = property(lambda self: self.request.delivery_count,
                              doc="1 the first time it is handed out, then 2, 3...")

    @property
    def message(self):
        """The payload decoded by ``type`` (raw bytes for an empty type)."""
        if self._decoded is None:
            self._decoded = _decode(self.type, self.payload, None)
        return self._decoded

    async def respond(self, msg: Union[pb_message.Message, bytes], *,
                      type: Optional[str] = None) -> None:
        """Answer with ``msg`` (a message, or bytes with ``type``): every
        submitter waiting for it gets it, and the daemon caches it.
        :class:`~jimbot.errors.NotFoundError` when this worker no longer
        holds it (answered already, or given back with a closed stream)."""
        rtype, payload = encode_payload(msg, type)
        await self._answer(self, rtype, payload, "")
        self.answered = True

    async def fail(self, text: str) -> None:
        """Answer that it could not be done: its submitters get
        :class:`~jimbot.errors.WorkerError` with ``text`` (never cached)."""
        if not isinstance(text, str) or not text:
            raise InvalidArgumentError("fail() needs a non-empty error text")
        await self._answer(self, "", b"", text)
        self.answered = True

    def __repr__(self) -> str:
        return (f"QueueRequest(request_id={self.request_id!r}, type={self.type!r}, "
                f"priority={self.priority}, delivery_count={self.delivery_count}, "
                f"{len(self.payload)} bytes)")
