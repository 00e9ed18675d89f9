"""An asyncio client for jimbotd's event bus (``jimbot.infra.v1.EventBus``).

::

    import jimbot
    from jimbot.infrastructure.serialization import game_events_pb2

    async with jimbot.EventBus("127.0.0.1:50051", source="game_reader") as bus:
        update = game_events_pb2.GameStateUpdate(game_id="g1")
        update.joker_purchased.joker_name = "Jimbo"
        seq = await bus.publish("game_events.joker_purchased", update)

        async with bus.subscribe("game_events.>", "analytics") as sub:
            async for batch in sub:
                for event in batch:
                    print(event.sequence, event.message())
                await batch.ack()

Design notes:

* One ``grpc.aio`` channel per :class:`EventBus`, opened on first use (so
  the object may be built outside a running loop) and closed by
  :meth:`EventBus.close`.
* :meth:`EventBus.publish` wraps a protobuf message (or raw bytes with an
  explicit ``type``) in the bus envelope ``jimbot.infra.v1.Event`` and
  returns the event's sequence once the daemon says it is durable. With
  ``batch_window_ms > 0`` concurrent publishes are coalesced into one
  ``PublishRequest`` per window; one request is in flight at a time, so
  publishes from one client are stored in call order.
* Backpressure (``RESOURCE_EXHAUSTED``) is retried after the daemon's
  ``retry-after-ms`` hint until ``publish_timeout_s`` runs out, then
  :class:`jimbot.errors.BackpressureError` is raised. ``UNAVAILABLE`` is
  retried only when every event of the request carries an ``id``: the bus's
  deduplication makes the resend safe; without ids the outcome of a request
  cut off in flight is unknown, so the error is raised.
* :meth:`EventBus.subscribe` returns a :class:`Subscription`, an async
  iterator of :class:`Batch`. It reconnects on ``UNAVAILABLE`` with
  exponential backoff and full jitter; a named group keeps its position in
  the daemon, and a private subscription resumes after the last sequence it
  received.

Everything here runs on the caller's event loop; nothing is thread-safe.
"""

import asyncio
import logging
import pkgutil
import random
import time
from typing import Any, Awaitable, Callable, Iterable, Iterator, List, Optional, Sequence, Union

import grpc
from google.protobuf import descriptor_pool, message, message_factory, symbol_database

from . import errors
from .errors import (BackpressureError, ClosedError, InvalidArgumentError, UnavailableError,
                     UnknownTypeError, from_rpc_error)
from .infra.v1 import event_bus_pb2 as pb
from .infra.v1 import event_bus_pb2_grpc as pb_grpc
from .infra.v1 import health_pb2, health_pb2_grpc
from .topics import validate_pattern, validate_topic

__all__ = ["EventBus", "Event", "Batch", "Subscription", "HandlerSubscription", "make_event",
           "decode_message", "message_class", "DeliverPolicy", "DEFAULT_ADDR"]

log = logging.getLogger("jimbot.event_bus")

DEFAULT_ADDR = "127.0.0.1:50051"
#: Metadata key of the backpressure hint in a RESOURCE_EXHAUSTED answer.
RETRY_AFTER_KEY = errors.RETRY_AFTER_KEY
#: Initial-metadata key in which the daemon names a subscription's group
#: (the generated name of a private group).
GROUP_KEY = "jimbot-group"
# Wait before retrying a refused publish when the daemon gives no hint.
_DEFAULT_RETRY_AFTER_MS = 50
#: Keepalive defaults (as the C client's): a ping after 2 s without traffic,
#: the connection given up when it is not answered within 3 s.
DEFAULT_KEEPALIVE_MS = 2000
DEFAULT_KEEPALIVE_TIMEOUT_MS = 3000
#: The shortest interval used; jimbotd accepts pings this often.
MIN_KEEPALIVE_MS = 1000


def keepalive_options(keepalive_ms: Optional[int], timeout_ms: int) -> list:
    """gRPC channel options for keepalive pings every ``keepalive_ms`` (at
    least MIN_KEEPALIVE_MS), also on an idle connection, answered within
    ``timeout_ms``; none for ``keepalive_ms`` None or 0 (no pings)."""
    if not keepalive_ms:
        return []
    return [("grpc.keepalive_time_ms", max(int(keepalive_ms), MIN_KEEPALIVE_MS)),
            ("grpc.keepalive_timeout_ms", max(int(timeout_ms), MIN_KEEPALIVE_MS)),
            ("grpc.keepalive_permit_without_calls", 1),
            # By default gRPC stops pinging after two pings without data.
            ("grpc.http2.max_pings_without_data", 0)]


def merge_channel_options(given: Optional[Sequence], *defaults: Sequence) -> list:
    """``given`` (the caller's channel options) followed by each default
    option whose key ``given`` does not set already."""
    options = list(given or [])
    keys = {key for key, _ in options}
    for group in defaults:
        options += [o for o in group if o[0] not in keys]
    return options


def open_channel(addr: str, credentials: Optional[grpc.ChannelCredentials],
                 options: Sequence) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``addr``: TLS with ``credentials``, else
    plaintext."""
    if credentials is not None:
        return grpc.aio.secure_channel(addr, credentials, list(options))
    return grpc.aio.insecure_channel(addr, list(options))


class DeliverPolicy:
    """Where a new consumer group starts (an existing group keeps its
    position). :meth:`EventBus.subscribe` also takes the lower-case names
    ``"new"``, ``"all"``, ``"from_sequence"`` and ``"from_time"``."""

    NEW = pb.DELIVER_POLICY_NEW
    ALL = pb.DELIVER_POLICY_ALL
    FROM_SEQUENCE = pb.DELIVER_POLICY_FROM_SEQUENCE
    FROM_TIME = pb.DELIVER_POLICY_FROM_TIME

    @classmethod
    def parse(cls, value: Union[str, int]) -> int:
        """The enum value for a name or a number; ValueError otherwise."""
        if isinstance(value, str):
            try:
                return getattr(cls, value.upper())
            except AttributeError:
                raise ValueError(f"unknown deliver policy {value!r}") from None
        if value in (cls.NEW, cls.ALL, cls.FROM_SEQUENCE, cls.FROM_TIME):
            return int(value)
        raise ValueError(f"unknown deliver policy {value!r}")


# --- Envelopes and payload types ---------------------------------------------------------------

def make_event(topic: str, msg: Union[message.Message, bytes], *, type: Optional[str] = None,
               id: Optional[str] = None, headers: Optional[dict] = None,
               source: Optional[str] = None, timestamp_ms: Optional[int] = None) -> pb.Event:
    """Build the bus envelope (``jimbot.infra.v1.Event``) for one event.

    ``msg`` is a protobuf message, serialized into ``payload`` with ``type``
    defaulting to its full name (``"jimbot.GameStateUpdate"``), or raw bytes,
    in which case ``type`` is required. ``timestamp_ms`` defaults to now.
    Raises :class:`jimbot.errors.InvalidArgumentError` for a bad topic and
    TypeError for a payload of another kind.
    """
    validate_topic(topic)
    if isinstance(msg, message.Message):
        payload = msg.SerializeToString()
        if type is None:
            type = msg.DESCRIPTOR.full_name
    elif isinstance(msg, (bytes, bytearray, memoryview)):
        payload = bytes(msg)
        if not type:
            raise TypeError("a raw bytes payload needs an explicit type=")
    else:
        raise TypeError(f"publish takes a protobuf message or bytes, not {msg.__class__.__name__}")
    ev = pb.Event(topic=topic, type=type, payload=payload, id=id or "", source=source or "",
                  timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
    if headers:
        ev.headers.update(headers)
    return ev


_known_modules_loaded = False


def _load_known_types() -> None:
    """Import every generated ``*_pb2`` module of the jimbot package once, so
    that its message types are in the default descriptor pool."""
    global _known_modules_loaded
    if _known_modules_loaded:
        return
    _known_modules_loaded = True
    import jimbot
    for info in pkgutil.walk_packages(jimbot.__path__, "jimbot."):
        if info.name.endswith("_pb2"):
            __import__(info.name)


def message_class(type_name: str) -> type:
    """The generated class of the protobuf message named ``type_name``
    (``"jimbot.GameStateUpdate"``), from the default descriptor pool.

    Types of every ``jimbot.*`` module are found; a type of your own is found
    once its ``_pb2`` module has been imported. Raises
    :class:`jimbot.errors.UnknownTypeError` otherwise.
    """
    db = symbol_database.Default()
    for attempt in range(2):
        try:
            return db.GetSymbol(type_name)
        except KeyError:
            pass
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(type_name)
            return message_factory.MessageFactory(descriptor_pool.Default()).GetPrototype(desc)
        except KeyError:
            if attempt == 0:
                _load_known_types()
    raise UnknownTypeError(f"no protobuf message type named {type_name!r} is known "
                           "(import the module that defines it)")


def decode_message(type_name: str, payload: bytes) -> message.Message:
    """Parse ``payload`` as the protobuf message ``type_name``.

    Raises :class:`jimbot.errors.UnknownTypeError` for an unknown type and
    :class:`google.protobuf.message.DecodeError` for a malformed payload.
    """
    cls = message_class(type_name)
    return cls.FromString(payload)


# --- What subscribers receive ------------------------------------------------------------------

class Event:
    """One delivered event: the envelope's fields, the payload decoded on
    demand with :meth:`message`, and :meth:`ack` / :meth:`nack` for its
    group.

    ``envelope`` is the ``jimbot.infra.v1.Event`` as received; ``group`` the
    consumer group it was delivered to.
    """

    __slots__ = ("envelope", "group", "_acker", "_decoded")

    def __init__(self, envelope: pb.Event, group: str = "", acker=None):
        self.envelope = envelope
        self.group = group
        self._acker = acker
        self._decoded = None

    id = property(lambda self: self.envelope.id, doc="The publisher's id ('' if none).")
    topic = property(lambda self: self.envelope.topic, doc="The topic it was published on.")
    type = property(lambda self: self.envelope.type, doc="The payload's type name.")
    timestamp_ms = property(lambda self: self.envelope.timestamp_ms,
                            doc="When it was published, in ms since the epoch.")
    source = property(lambda self: self.envelope.source, doc="The publishing component.")
    payload = property(lambda self: self.envelope.payload, doc="The serialized payload (bytes).")
    headers = property(lambda self: self.envelope.headers, doc="Free-form metadata (a mapping).")
    sequence = property(lambda self: self.envelope.sequence,
                        doc="Its position in the bus's global log.")
    delivery_attempt = property(lambda self: self.envelope.delivery_attempt,
                                doc="1 on first delivery, then 2, 3...")

    def message(self) -> message.Message:
        """The payload decoded as the protobuf message named by ``type``
        (cached). See :func:`message_class` for which types are known."""
        if self._decoded is None:
            self._decoded = decode_message(self.envelope.type, self.envelope.payload)
        return self._decoded

    async def ack(self) -> None:
        """Ack this event for its group."""
        await self._acker.ack(self.group, [self.sequence])

    async def nack(self, delay_ms: int = 0) -> None:
        """Ask for redelivery, no sooner than ``delay_ms`` (0: the bus's backoff)."""
        await self._acker.nack(self.group, [self.sequence], delay_ms=delay_ms)

    def __repr__(self):
        return (f"Event(sequence={self.sequence}, topic={self.topic!r}, type={self.type!r}, "
                f"attempt={self.delivery_attempt}, {len(self.payload)} bytes)")


class Batch(Sequence):
    """The events of one delivery, in sequence order (a read-only sequence
    of :class:`Event`), with :meth:`ack` and :meth:`nack` for all of them."""

    __slots__ = ("events", "group", "_acker")

    def __init__(self, envelopes: Iterable[pb.Event], group: str = "", acker=None):
        self.group = group
        self._acker = acker
        self.events: List[Event] = [Event(e, group, acker) for e in envelopes]

    def __getitem__(self, i):
        return self.events[i]

    def __len__(self):
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    @property
    def sequences(self) -> List[int]:
        """The sequences of the batch's events."""
        return [e.sequence for e in self.events]

    async def ack(self) -> List[int]:
        """Ack every event of the batch; returns the sequences the bus did not
        hold in flight (see :meth:`EventBus.ack`)."""
        return await self._acker.ack(self.group, self.sequences) if self.events else []

    async def nack(self, delay_ms: int = 0) -> List[int]:
        """Nack every event of the batch."""
        return (await self._acker.nack(self.group, self.sequences, delay_ms=delay_ms)
                if self.events else [])

    def __repr__(self):
        return f"Batch(group={self.group!r}, {len(self.events)} events)"


def _sequences(items: Iterable[Union[int, Event]]) -> List[int]:
    """Sequences from ints, Events or a Batch."""
    return [i if isinstance(i, int) else i.sequence for i in items]


def _metadata_value(md, key: str) -> Optional[str]:
    """The first value of ``key`` in gRPC metadata (a tuple of pairs or a
    grpc.aio.Metadata), or None."""
    if not md:
        return None
    for k, v in md:
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


class _Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in
    [0, min(cap, initial * 2**n)]."""

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap, self.n = initial, cap, 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * (2 ** self.n))
        self.n = min(self.n + 1, 32)
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self.n = 0


class Subscription:
    """A live subscription to the bus: an async iterator of :class:`Batch`.

    Made by :meth:`EventBus.subscribe`; the stream opens at once. ``await
    sub.ready()`` waits until the daemon has registered it (events published
    afterwards are delivered under the ``NEW`` policy). Use it as an async
    context manager, or call :meth:`close`, to end it; ending the loop with
    ``break`` alone leaves the stream open until the object is collected.

    ``group`` is the consumer group; for a private subscription it is the
    name the daemon gave it, once known (after :meth:`ready` or the first
    batch).
    """

    def __init__(self, bus: "EventBus", request: pb.SubscribeRequest, *, auto_ack: bool,
                 reconnect: bool):
        self._bus = bus
        self._request = request
        self._auto_ack = auto_ack
        self._reconnect = reconnect
        self._private = not request.group
        self.group = request.group or ""
        self._last_sequence = 0
        self._unacked: Optional[Batch] = None
        self._closed = False
        self._backoff = _Backoff(bus._reconnect_initial_s, bus._reconnect_max_s)
        #: How many times the stream was re-established after UNAVAILABLE.
        self.reconnects = 0
        self._call = None
        self._metadata_read = False
        self._open()

    def _open(self) -> None:
        req = self._request
        if self._private and self._last_sequence:
            # A private group died with the old stream: resume after the
            # last event received, so nothing is skipped or repeated.
            req = pb.SubscribeRequest()
            req.CopyFrom(self._request)
            req.deliver_policy = pb.DELIVER_POLICY_FROM_SEQUENCE
            req.start_sequence = self._last_sequence + 1
        self._call = self._bus._stub_or_raise().Subscribe(req)
        self._metadata_read = False
        self._bus._subscriptions.add(self)

    async def _read_metadata(self) -> None:
        if not self._metadata_read:
            md = await self._call.initial_metadata()
            self._metadata_read = True
            name = _metadata_value(md, GROUP_KEY)
            if name:
                self.group = name

    async def ready(self) -> "Subscription":
        """Wait until the daemon has answered the subscription (its initial
        metadata), then return self. Raises like iteration does."""
        while True:
            if self._closed:
                raise ClosedError("the subscription was closed")
            if self._call is None:
                self._open()
            try:
                await self._read_metadata()
                return self
            except grpc.aio.AioRpcError as e:
                try:
                    await self._on_error(e)
                except StopAsyncIteration:
                    raise ClosedError("the subscription was closed") from None

    async def _on_error(self, e: grpc.aio.AioRpcError) -> None:
        """Reconnect after a backoff on UNAVAILABLE; otherwise raise."""
        self._call = None
        if (e.code() == grpc.StatusCode.UNAVAILABLE and self._reconnect and not self._closed
                and not self._bus._closed):
            delay = self._backoff.next()
            log.info("subscription %s: %s; reconnecting in %.2fs", self._request.pattern,
                     e.details(), delay)
            await asyncio.sleep(delay)
            if self._closed or self._bus._closed:
                raise StopAsyncIteration
            self.reconnects += 1
            self._open()
            return
        if e.code() == grpc.StatusCode.CANCELLED and (self._closed or self._bus._closed):
            raise StopAsyncIteration
        raise from_rpc_error(e) from e

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Batch:
        if self._unacked is not None:
            batch, self._unacked = self._unacked, None
            try:
                await batch.ack()
            except UnavailableError as e:
                # The events will be redelivered: at-least-once.
                log.warning("auto-ack of %d events failed: %s", len(batch), e)
        while True:
            if self._closed or self._bus._closed:
                raise StopAsyncIteration
            if self._call is None:
                self._open()
            try:
                await self._read_metadata()
                resp = await self._call.read()
            except grpc.aio.AioRpcError as e:
                await self._on_error(e)
                continue
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError for a call cancelled by close().
                task = asyncio.current_task()
                if (self._closed or self._bus._closed) and not (task and task.cancelling()):
                    raise StopAsyncIteration
                raise
            if resp is grpc.aio.EOF:
                # The daemon ended the stream without an error.
                self._call = None
                self._closed = True
                raise StopAsyncIteration
            self._backoff.reset()
            batch = Batch(resp.events, self.group, self._bus)
            if batch.events:
                self._last_sequence = max(self._last_sequence, batch.events[-1].sequence)
            if self._auto_ack:
                self._unacked = batch
            return batch

    async def close(self) -> None:
        """End the subscription (idempotent). With ``auto_ack`` the last batch
        handed out is acked first."""
        if self._unacked is not None and not self._bus._closed:
            batch, self._unacked = self._unacked, None
            try:
                await batch.ack()
            except errors.JimbotError as e:
                log.warning("auto-ack at close failed: %s", e)
        self._closed = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._bus._subscriptions.discard(self)

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


Handler = Callable[[Event], Awaitable[Any]]


class HandlerSubscription:
    """A subscription that calls a handler for each event (made by
    ``subscribe_handler``). The handler's normal return acks the event; an
    exception nacks it (the bus redelivers it later, and dead-letters it
    after its group's maximum deliveries). ``await h.close()`` stops it."""

    def __init__(self, sub: Subscription, handler: Handler):
        self.subscription = sub
        self._handler = handler
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.subscription:
            for event in batch:
                try:
                    await self._handler(event)
                except Exception:  # noqa: BLE001: a failing handler nacks its event
                    log.exception("handler failed on %r; nacking it", event)
                    await event.nack()
                else:
                    await event.ack()

    @property
    def group(self) -> str:
        """The consumer group."""
        return self.subscription.group

    async def close(self) -> None:
        """Stop calling the handler and end the subscription."""
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, errors.JimbotError):
            pass
        await self.subscription.close()


class EventBus:
    """Client of jimbotd's event bus at ``addr`` (``host:port``).

    ``source`` fills each event's ``source`` unless a publish names one.
    ``batch_window_ms`` > 0 coalesces concurrent :meth:`publish` calls into
    one request per window (at most ``max_batch_size`` events; a full batch
    goes at once). ``publish_timeout_s`` bounds each publish, backpressure
    retries included. ``reconnect_initial_s`` and ``reconnect_max_s`` shape
    the subscription's reconnect backoff. ``keepalive_ms`` and
    ``keepalive_timeout_ms`` make a vanished daemon (frozen, host gone,
    network cut, the TCP connection still open) noticed within about their
    sum: calls fail ``UNAVAILABLE`` and subscriptions reconnect;
    ``keepalive_ms=None`` turns the pings off. ``credentials`` (a
    ``grpc.ChannelCredentials``) selects TLS; ``channel_options`` go to the
    gRPC channel (and win over the keepalive options they repeat).
    """

    def __init__(self, addr: str = DEFAULT_ADDR, *, source: str = "", batch_window_ms: int = 0,
                 max_batch_size: int = 1000, publish_timeout_s: float = 10.0,
                 reconnect_initial_s: float = 0.1, reconnect_max_s: float = 5.0,
                 keepalive_ms: Optional[int] = DEFAULT_KEEPALIVE_MS,
                 keepalive_timeout_ms: int = DEFAULT_KEEPALIVE_TIMEOUT_MS,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 channel_options: Optional[Sequence] = None):
        if batch_window_ms < 0 or max_batch_size < 1:
            raise ValueError("batch_window_ms must be >= 0 and max_batch_size >= 1")
        self.addr = addr
        self.source = source
        self._window_s = batch_window_ms / 1000.0
        self._max_batch = max_batch_size
        self._publish_timeout_s = publish_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._credentials = credentials
        self._channel_options = merge_channel_options(
            channel_options, keepalive_options(keepalive_ms, keepalive_timeout_ms))
        self._channel = None
        self._stub = None
        self._closed = False
        self._pending: list = []          # (envelope, future) awaiting the window
        self._window_timer = None
        self._flushes: set = set()        # tasks sending a coalesced batch
        self._send_lock = asyncio.Lock()  # one coalesced request in flight at a time
        self._subscriptions: set = set()
        #: Counters, for tests and metrics: requests sent, backpressure retries.
        self.stats = {"publish_requests": 0, "events_published": 0, "backpressure_retries": 0}

    # -- plumbing -------------------------------------------------------------------------------

    def _stub_or_raise(self) -> pb_grpc.EventBusStub:
        if self._closed:
            raise ClosedError("the EventBus is closed")
        if self._stub is None:
            self._channel = open_channel(self.addr, self._credentials, self._channel_options)
            self._stub = pb_grpc.EventBusStub(self._channel)
        return self._stub

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected; DeadlineExceededError if not
        within ``timeout`` seconds."""
        self._stub_or_raise()
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise errors.DeadlineExceededError(
                f"no connection to {self.addr} within {timeout}s") from None

    async def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The daemon's ``grpc.health.v1`` status for ``service`` ('' is the
        whole server): ``"SERVING"``, ``"NOT_SERVING"``..."""
        self._stub_or_raise()
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, topic: str, msg: Union[message.Message, bytes], *,
                      type: Optional[str] = None, id: Optional[str] = None,
                      headers: Optional[dict] = None, source: Optional[str] = None,
                      timestamp_ms: Optional[int] = None) -> int:
        """Publish one event; return its sequence once it is durable.

        ``msg`` is a protobuf message (``type`` defaults to its full name) or
        bytes with an explicit ``type``. ``id`` enables deduplication (and
        safe retries); ``headers`` is a str-to-str mapping. Raises
        :class:`~jimbot.errors.InvalidArgumentError`,
        :class:`~jimbot.errors.BackpressureError`,
        :class:`~jimbot.errors.UnavailableError`...

        Cancelling a publish that waits in a batch window does not withdraw
        the event.
        """
        ev = make_event(topic, msg, type=type, id=id, headers=headers,
                        source=self.source if source is None else source,
                        timestamp_ms=timestamp_ms)
        if self._window_s <= 0:
            return (await self._send([ev]))[0]
        self._stub_or_raise()
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((ev, fut))
        if len(self._pending) >= self._max_batch:
            self._start_flush()
        elif self._window_timer is None:
            self._window_timer = asyncio.get_running_loop().call_later(self._window_s,
                                                                       self._start_flush)
        return await fut

    async def publish_many(self, items: Iterable[Union[pb.Event, tuple]]) -> List[int]:
        """Publish several events in one request, all or none; return their
        sequences in order.

        Each item is a ``(topic, msg)`` pair or an envelope made by
        :func:`make_event` (for ids, headers or types). Bypasses the batch
        window.
        """
        events = []
        for item in items:
            if isinstance(item, pb.Event):
                events.append(item)
            else:
                topic, msg = item
                events.append(make_event(topic, msg, source=self.source))
        if not events:
            return []
        return await self._send(events)

    async def flush(self) -> None:
        """Send what waits in the batch window now and wait for every
        coalesced request in flight."""
        self._start_flush()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _start_flush(self) -> None:
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush_batch(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_batch(self, batch: list) -> None:
        """Send one coalesced batch and settle each caller's future."""
        async with self._send_lock:
            try:
                seqs = await self._send([ev for ev, _ in batch])
            except InvalidArgumentError as e:
                if len(batch) == 1:
                    _settle(batch[0][1], exc=e)
                    return
                # All or none: nothing was stored. Resend one by one so that
                # only the callers with bad events see the error.
                for ev, fut in batch:
                    try:
                        _settle(fut, result=(await self._send([ev]))[0])
                    except errors.JimbotError as e1:
                        _settle(fut, exc=e1)
                return
            except BaseException as e:  # noqa: BLE001: every caller must hear of it
                for _, fut in batch:
                    _settle(fut, exc=e)
                if not isinstance(e, Exception):
                    raise
                return
            for (_, fut), seq in zip(batch, seqs):
                _settle(fut, result=seq)

    def _refused_error(self, events: List[pb.Event], e: grpc.aio.AioRpcError,
                       hint_ms: Optional[int]) -> BackpressureError:
        return BackpressureError(
            f"the bus refused {len(events)} event(s) for lack of room for "
            f"{self._publish_timeout_s:g}s ({e.details()})", retry_after_ms=hint_ms)

    async def _send(self, events: List[pb.Event]) -> List[int]:
        """One PublishRequest, with backpressure (and, for events with ids,
        reconnect) retries until the publish deadline."""
        stub = self._stub_or_raise()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout_s
        req = pb.PublishRequest(events=events)
        backoff = _Backoff(self._reconnect_initial_s, self._reconnect_max_s)
        refused = None  # the last RESOURCE_EXHAUSTED answer and its hint
        while True:
            remaining = deadline - loop.time()
            try:
                self.stats["publish_requests"] += 1
                resp = await stub.Publish(req, timeout=max(remaining, 0.001))
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    hint = _metadata_value(e.trailing_metadata(), RETRY_AFTER_KEY)
                    try:
                        hint_ms = int(hint) if hint is not None else None
                    except ValueError:
                        hint_ms = None
                    refused = (e, hint_ms)
                    wait = (hint_ms if hint_ms is not None else _DEFAULT_RETRY_AFTER_MS) / 1000
                    if loop.time() + wait >= deadline:
                        raise self._refused_error(events, e, hint_ms) from e
                    self.stats["backpressure_retries"] += 1
                    await asyncio.sleep(wait)
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and refused is not None:
                    # The retry that the publish deadline cut short was waiting for
                    # room the bus had refused: report the refusal, not the deadline.
                    raise self._refused_error(events, *refused) from e
                if (code == grpc.StatusCode.UNAVAILABLE and all(ev.id for ev in events)
                        and not self._closed):
                    wait = backoff.next()
                    if loop.time() + wait < deadline:
                        await asyncio.sleep(wait)
                        continue
                raise from_rpc_error(e) from e
            if len(resp.sequences) != len(events):
                raise errors.JimbotError(f"the bus answered {len(resp.sequences)} sequences "
                                         f"for {len(events)} events")
            self.stats["events_published"] += len(events)
            return list(resp.sequences)

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, pattern: str, group: Optional[str] = None, *, max_in_flight: int = 0,
                  deliver_policy: Union[str, int] = "new", start_sequence: int = 0,
                  start_time_ms: int = 0, ack_wait_ms: int = 0, max_deliver: int = 0,
                  auto_ack: bool = False, reconnect: bool = True) -> Subscription:
        """Subscribe to ``pattern`` as a member of ``group``; return a
        :class:`Subscription`, an async iterator of :class:`Batch`.

        ``group`` None or '' makes a private group for this stream alone.
        ``max_in_flight`` caps the unacked events held (0: the bus's
        default). ``deliver_policy`` (``"new"``, ``"all"``,
        ``"from_sequence"`` with ``start_sequence``, ``"from_time"`` with
        ``start_time_ms``), ``ack_wait_ms`` and ``max_deliver`` apply when
        the group is created. With ``auto_ack`` each batch is acked when the
        next one is asked for (that is, after the loop body has handled it)
        or at close. ``reconnect`` re-establishes the stream after
        ``UNAVAILABLE``.
        """
        validate_pattern(pattern)
        req = pb.SubscribeRequest(pattern=pattern, group=group or "", max_in_flight=max_in_flight,
                                  deliver_policy=DeliverPolicy.parse(deliver_policy),
                                  start_sequence=start_sequence, start_time_ms=start_time_ms,
                                  ack_wait_ms=ack_wait_ms, max_deliver=max_deliver)
        return Subscription(self, req, auto_ack=auto_ack, reconnect=reconnect)

    async def subscribe_handler(self, pattern: str, handler: Handler,
                                group: Optional[str] = None, **options) -> HandlerSubscription:
        """Call ``await handler(event)`` for each event of ``pattern`` in
        ``group``; a normal return acks the event, an exception nacks it.
        ``options`` are those of :meth:`subscribe`. Returns once the daemon
        has registered the subscription."""
        sub = self.subscribe(pattern, group, **options)
        await sub.ready()
        return HandlerSubscription(sub, handler)

    async def ack(self, group: str, sequences: Iterable[Union[int, Event]]) -> List[int]:
        """Ack delivered events of ``group`` (sequences, Events or a Batch).
        Returns the sequences the bus did not hold in flight for the group
        (already acked, or redelivered elsewhere): acking them changed
        nothing."""
        seqs = _sequences(sequences)
        try:
            resp = await self._stub_or_raise().Ack(pb.AckRequest(group=group, sequences=seqs),
                                                   timeout=self._publish_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return list(resp.unknown)

    async def nack(self, group: str, sequences: Iterable[Union[int, Event]],
                   delay_ms: int = 0) -> List[int]:
        """Ask for redelivery of delivered events of ``group``, no sooner than
        ``delay_ms`` (0: the bus's backoff). Returns the unknown sequences,
        as :meth:`ack` does."""
        seqs = _sequences(sequences)
        try:
            resp = await self._stub_or_raise().Nack(
                pb.NackRequest(group=group, sequences=seqs, delay_ms=delay_ms),
                timeout=self._publish_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return list(resp.unknown)

    # -- lifetime -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Flush the batch window, end every subscription and close the
        channel (idempotent). Using the client afterwards raises
        :class:`~jimbot.errors.ClosedError`."""
        if self._closed:
            return
        if self._stub is not None:
            await self.flush()
        for sub in list(self._subscriptions):
            await sub.close()
        self._closed = True
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def __aenter__(self) -> "EventBus":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _settle(fut: asyncio.Future, *, result=None, exc: Optional[BaseException] = None) -> None:
    """Complete a caller's future unless the caller gave up on it."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
