"""``MockEventBus`` and ``MockInfrastructure``: the event bus and the
resource coordinator in memory, for component tests.

(:class:`MockInfrastructure`, GPU leases and the API budget, is described at
its class, after the bus's mock; :class:`FakeClock` drives its time.)

It has the surface of :class:`jimbot.EventBus` (``publish``,
``publish_many``, ``subscribe``, ``subscribe_handler``, ``ack``, ``nack``,
``flush``, ``close``) and the bus's semantics, minus durability and time:

* every publish is recorded in ``published_events``, a list of
  ``(topic, event)`` pairs where ``event`` is a :class:`jimbot.Event`
  (``event.message()`` decodes the payload, so a test can compare it with
  what it published);
* delivery is immediate: ``await bus.publish(...)`` returns after every
  matching handler subscription has run its handler (as in the seed's
  MockEventBus), and iterator subscriptions find the batch waiting;
* patterns use ``*`` (one token) and ``>`` (the rest) with the rules of
  :mod:`jimbot.topics`, which are the bus's; bad topics and patterns raise
  :class:`jimbot.errors.InvalidArgumentError` as the bus refuses them;
* consumer groups: every matching group receives each event; the
  subscribers of one group share its events (round-robin by batch); a
  subscriber holds at most ``max_in_flight`` unacked events; a nack
  redelivers (``delivery_attempt`` counts), and after ``max_deliver``
  deliveries the event goes to ``dlq.<topic>`` with the bus's
  ``jimbot-dlq-*`` headers; a subscriber that leaves gives its unacked
  events back to its group; ids are deduplicated.

Not modelled: ack deadlines (use ``nack``), batch windows, aggregation
rules, backpressure, persistence.

Example::

    from jimbot.testing import MockEventBus

    async def test_reader_publishes_purchases(self):
        bus = MockEventBus()
        seen = []
        async def on_event(event):
            seen.append(event.message())
        await bus.subscribe_handler("game_events.>", on_event, group="analytics")
        await component_under_test(bus)          # it calls bus.publish(...)
        self.assertEqual(seen[0].joker_purchased.joker_name, "Jimbo")
        self.assertEqual(bus.published_events[0][0], "game_events.joker_purchased")

Handler errors: with ``raise_handler_errors=True`` (the default) an
exception in a handler propagates out of the ``publish`` that delivered the
event, and the event stays in flight, so a test sees the failure where it
happens. With False the event is nacked and redelivered, as the real bus
does, until it is dead-lettered. A publish made from inside a handler
returns before its own deliveries run; they run as soon as the current
handler returns.
"""

import asyncio
import bisect
import collections
import inspect
import itertools
import math
import time
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import grpc
from google.protobuf import message

from .coordinator import GpuApi, GpuLease, QueueApi, QuotaGrant, gpu_request, quota_answer
from .errors import (AlreadyExistsError, BackpressureError, ClosedError, DeadlineExceededError,
                     FailedPreconditionError, InvalidArgumentError, LeaseExpiredError, LeaseLostError, NotFoundError,
                     PoisonedRequestError, RateLimitedError, UnavailableError)
from .event_bus import Batch, DeliverPolicy, Event, make_event
from .infra.v1 import event_bus_pb2 as pb
from .infra.v1 import infrastructure_pb2 as pb_infra
from .queues import (MAX_QUEUE_BYTES, MAX_REQUEST_ID_BYTES, MAX_SUBMITTER_BYTES, MAX_TYPE_BYTES,
                     QueueRequest, QueueResponse, make_request, take_request)
from .redis_access import RedisAccess, RedisApi
from .topics import matches, validate_pattern, validate_topic

__all__ = ["MockEventBus", "MockSubscription", "MockHandlerSubscription", "MockInfrastructure",
           "MockQueueWorker", "FakeClock"]

#: The bus's limit on one event (payload and envelope).
MAX_EVENT_BYTES = 1 << 20
DEFAULT_MAX_IN_FLIGHT = 1000
DEFAULT_MAX_DELIVER = 5


class _Sub:
    """One subscriber: a queue (iterator) or a handler, with its credits."""

    def __init__(self, group: "_Group", max_in_flight: int, handler=None):
        self.group = group
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.handler = handler
        self.queue: Optional[asyncio.Queue] = None if handler else asyncio.Queue()
        self.inbox: collections.deque = collections.deque()  # handler batches not yet run
        self.active = True

    def credit(self) -> int:
        return self.max_in_flight - self.in_flight if self.active else 0


class _Group:
    """A consumer group: its pattern, members, due events and those in flight."""

    def __init__(self, name: str, pattern: str, private: bool, max_deliver: int):
        self.name = name
        self.pattern = pattern
        self.private = private
        self.max_deliver = max_deliver
        self.subs: List[_Sub] = []
        self.rr = 0
        self.pending: List[pb.Event] = []   # due, in sequence order
        self.in_flight = {}                 # sequence -> (envelope, subscriber)
        self.attempts = collections.Counter()


class MockEventBus:
    """The event bus in memory; see the module's documentation.

    ``source`` fills each event's ``source`` unless a publish names one;
    ``max_in_flight`` and ``max_deliver`` are the defaults a subscription or
    group gets when it asks for 0.
    """

    def __init__(self, *, source: str = "", max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 max_deliver: int = DEFAULT_MAX_DELIVER, raise_handler_errors: bool = True):
        self.source = source
        self.max_in_flight = max_in_flight
        self.max_deliver = max_deliver
        self.raise_handler_errors = raise_handler_errors
        #: Every stored event, in order: (topic, jimbot.Event).
        self.published_events: List[Tuple[str, Event]] = []
        self._log: List[pb.Event] = []
        self._ids = {}
        self._groups = {}
        self._private_counter = itertools.count(1)
        self._handler_subs: List[_Sub] = []
        self._running_handlers = False
        self._timers = {}                  # key -> TimerHandle of a delayed redelivery
        self._timer_keys = itertools.count()
        self._closed = False

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, topic: str, msg: Union[message.Message, bytes], *,
                      type: Optional[str] = None, id: Optional[str] = None,
                      headers: Optional[dict] = None, source: Optional[str] = None,
                      timestamp_ms: Optional[int] = None) -> int:
        """Store and deliver one event; return its sequence (as
        :meth:`jimbot.EventBus.publish`)."""
        ev = make_event(topic, msg, type=type, id=id, headers=headers,
                        source=self.source if source is None else source,
                        timestamp_ms=timestamp_ms)
        return (await self.publish_envelopes([ev]))[0][0]

    async def publish_many(self, items: Iterable[Union[pb.Event, tuple]]) -> List[int]:
        """Store and deliver several events, all or none (as
        :meth:`jimbot.EventBus.publish_many`)."""
        events = [item if isinstance(item, pb.Event)
                  else make_event(item[0], item[1], source=self.source) for item in items]
        return [seq for seq, _ in await self.publish_envelopes(events)]

    async def publish_envelopes(self, events: List[pb.Event]) -> List[Tuple[int, bool]]:
        """Store ready-made envelopes, all or none, and deliver them; return
        ``(sequence, duplicate)`` per event. Sequence and attempt fields of
        the input are ignored; a zero timestamp is stamped with now."""
        self._check_open()
        for ev in events:
            validate_topic(ev.topic)
            if ev.ByteSize() > MAX_EVENT_BYTES:
                raise InvalidArgumentError(
                    f"event of {ev.ByteSize()} bytes on '{ev.topic}' (at most {MAX_EVENT_BYTES})")
        out = []
        seen = {}
        touched = {}
        for ev in events:
            if ev.id and (ev.id in self._ids or ev.id in seen):
                out.append((self._ids.get(ev.id) or seen[ev.id], True))
                continue
            stored = pb.Event()
            stored.CopyFrom(ev)
            stored.delivery_attempt = 0
            stored.sequence = len(self._log) + 1
            if not stored.timestamp_ms:
                stored.timestamp_ms = int(time.time() * 1000)
            self._store(stored, touched)
            if ev.id:
                seen[ev.id] = stored.sequence
            out.append((stored.sequence, False))
        self._ids.update(seen)
        for group in touched.values():
            self._dispatch(group)
        await self._run_handlers()
        return out

    def _store(self, stored: pb.Event, touched: dict) -> None:
        """Append to the log, record, and queue for every matching group;
        the groups go into ``touched`` for the caller to dispatch once."""
        self._log.append(stored)
        self.published_events.append((stored.topic, Event(stored, "", self)))
        for group in self._groups.values():
            if matches(group.pattern, stored.topic):
                group.pending.append(stored)
                touched[group.name] = group

    async def flush(self) -> None:
        """Nothing waits in a window here; present for the same surface."""

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, pattern: str, group: Optional[str] = None, *, max_in_flight: int = 0,
                  deliver_policy: Union[str, int] = "new", start_sequence: int = 0,
                  start_time_ms: int = 0, ack_wait_ms: int = 0, max_deliver: int = 0,
                  auto_ack: bool = False, reconnect: bool = True) -> "MockSubscription":
        """Join (or create) ``group`` for ``pattern`` now; return an async
        iterator of :class:`jimbot.Batch` (as :meth:`jimbot.EventBus.subscribe`).
        ``ack_wait_ms`` and ``reconnect`` are accepted and ignored."""
        sub = self._join(pattern, group, max_in_flight, deliver_policy, start_sequence,
                         start_time_ms, max_deliver, handler=None)
        return MockSubscription(self, sub, auto_ack)

    async def subscribe_handler(self, pattern: str, handler, group: Optional[str] = None,
                                **options) -> "MockHandlerSubscription":
        """Call ``await handler(event)`` for every event of ``pattern`` in
        ``group``, during the publish that stores it; a normal return acks
        it. ``options`` are those of :meth:`subscribe` (``auto_ack`` aside)."""
        options.pop("auto_ack", None)
        options.pop("ack_wait_ms", None)
        options.pop("reconnect", None)
        sub = self._join(pattern, group, handler=handler, **options)
        self._handler_subs.append(sub)
        await self._run_handlers()
        return MockHandlerSubscription(self, sub)

    def _join(self, pattern, group, max_in_flight=0, deliver_policy="new", start_sequence=0,
              start_time_ms=0, max_deliver=0, *, handler) -> _Sub:
        self._check_open()
        validate_pattern(pattern)
        policy = DeliverPolicy.parse(deliver_policy)
        name = group or f"_private.{next(self._private_counter)}"
        g = self._groups.get(name)
        if g is None:
            g = _Group(name, pattern, not group, max_deliver or self.max_deliver)
            self._groups[name] = g
            for ev in self._log:
                if not matches(pattern, ev.topic):
                    continue
                if (policy == DeliverPolicy.ALL
                        or (policy == DeliverPolicy.FROM_SEQUENCE and ev.sequence >= start_sequence)
                        or (policy == DeliverPolicy.FROM_TIME and ev.timestamp_ms >= start_time_ms)):
                    g.pending.append(ev)
        elif g.pattern != pattern:
            raise InvalidArgumentError(
                f"group '{name}' has the pattern '{g.pattern}', not '{pattern}'")
        sub = _Sub(g, max_in_flight or self.max_in_flight, handler)
        g.subs.append(sub)
        self._dispatch(g)
        return sub

    def _leave(self, sub: _Sub) -> None:
        """Remove a subscriber; its in-flight events become due at once."""
        if not sub.active:
            return
        sub.active = False
        g = sub.group
        if sub in g.subs:
            g.subs.remove(sub)
        if sub in self._handler_subs:
            self._handler_subs.remove(sub)
        for seq, (ev, holder) in list(g.in_flight.items()):
            if holder is sub:
                del g.in_flight[seq]
                bisect.insort(g.pending, ev, key=lambda e: e.sequence)
        if sub.queue is not None:
            sub.queue.put_nowait(None)
        if g.private and not g.subs:
            self._groups.pop(g.name, None)
            return
        self._dispatch(g)

    def _dispatch(self, g: _Group) -> None:
        """Hand due events to members with credit, one batch per member in
        turn. Handler batches wait in the member's inbox for _run_handlers."""
        while g.pending and g.subs:
            sub = None
            for i in range(len(g.subs)):
                cand = g.subs[(g.rr + i) % len(g.subs)]
                if cand.credit() > 0:
                    sub = cand
                    g.rr = (g.rr + i + 1) % len(g.subs)
                    break
            if sub is None:
                return
            n = min(sub.credit(), len(g.pending))
            taken, g.pending = g.pending[:n], g.pending[n:]
            delivered = []
            for ev in taken:
                g.attempts[ev.sequence] += 1
                g.in_flight[ev.sequence] = (ev, sub)
                copy = pb.Event()
                copy.CopyFrom(ev)
                copy.delivery_attempt = g.attempts[ev.sequence]
                delivered.append(copy)
            sub.in_flight += n
            batch = Batch(delivered, g.name, self)
            if sub.queue is not None:
                sub.queue.put_nowait(batch)
            else:
                sub.inbox.append(batch)

    async def _run_handlers(self) -> None:
        """Run every waiting handler batch, in order, until none is left. Not
        re-entrant: a call made from inside a handler returns at once."""
        if self._running_handlers:
            return
        self._running_handlers = True
        try:
            while True:
                sub = next((s for s in self._handler_subs if s.inbox), None)
                if sub is None:
                    return
                batch = sub.inbox.popleft()
                for event in batch:
                    if not sub.active:
                        break
                    try:
                        await sub.handler(event)
                    except Exception:
                        if self.raise_handler_errors:
                            raise
                        self._nack_now(sub.group, [event.sequence], 0)
                    else:
                        self._ack_now(sub.group, [event.sequence])
        finally:
            self._running_handlers = False

    # -- acks -----------------------------------------------------------------------------------

    def _group(self, name: str) -> _Group:
        g = self._groups.get(name)
        if g is None:
            raise NotFoundError(f"no consumer group '{name}'")
        return g

    def _release(self, g: _Group, seq: int):
        ev, sub = g.in_flight.pop(seq)
        sub.in_flight -= 1
        return ev

    def _ack_now(self, g: _Group, seqs: Iterable[int]) -> List[int]:
        unknown = []
        for seq in seqs:
            if seq in g.in_flight:
                self._release(g, seq)
                del g.attempts[seq]
            else:
                unknown.append(seq)
        self._dispatch(g)
        return unknown

    def _nack_now(self, g: _Group, seqs: Iterable[int], delay_ms: int) -> List[int]:
        unknown = []
        for seq in seqs:
            if seq not in g.in_flight:
                unknown.append(seq)
                continue
            ev = self._release(g, seq)
            if g.attempts[seq] >= g.max_deliver:
                self._dead_letter(g, ev)
            elif delay_ms > 0:
                key = next(self._timer_keys)
                self._timers[key] = asyncio.get_running_loop().call_later(
                    delay_ms / 1000, self._redeliver_later, key, g, ev)
            else:
                bisect.insort(g.pending, ev, key=lambda e: e.sequence)
        self._dispatch(g)
        return unknown

    def _redeliver_later(self, key: int, g: _Group, ev: pb.Event) -> None:
        self._timers.pop(key, None)
        if self._groups.get(g.name) is g:
            bisect.insort(g.pending, ev, key=lambda e: e.sequence)
            self._dispatch(g)
            if any(s.inbox for s in self._handler_subs):
                asyncio.get_running_loop().create_task(self._run_handlers())

    def _dead_letter(self, g: _Group, ev: pb.Event) -> None:
        """Publish a copy to dlq.<topic> with the bus's headers; the event is
        then done for the group."""
        attempts = g.attempts.pop(ev.sequence)
        dead = pb.Event()
        dead.CopyFrom(ev)
        dead.topic = f"dlq.{ev.topic}"
        dead.id = ""
        dead.headers.update({"jimbot-dlq-reason": "max_deliver", "jimbot-dlq-group": g.name,
                             "jimbot-dlq-topic": ev.topic,
                             "jimbot-dlq-sequence": str(ev.sequence),
                             "jimbot-dlq-attempts": str(attempts)})
        dead.sequence = len(self._log) + 1
        touched = {}
        self._store(dead, touched)
        for group in touched.values():
            self._dispatch(group)

    async def ack(self, group: str, sequences: Iterable[Union[int, Event]]) -> List[int]:
        """Ack delivered events of ``group``; return the sequences that were
        not in flight (as :meth:`jimbot.EventBus.ack`). NotFoundError for an
        unknown group."""
        unknown = self._ack_now(self._group(group), _seqs(sequences))
        await self._run_handlers()
        return unknown

    async def nack(self, group: str, sequences: Iterable[Union[int, Event]],
                   delay_ms: int = 0) -> List[int]:
        """Redeliver events of ``group`` after ``delay_ms`` (0: at once);
        dead-letter those that reached ``max_deliver``."""
        unknown = self._nack_now(self._group(group), _seqs(sequences), delay_ms)
        await self._run_handlers()
        return unknown

    # -- inspection, for tests ------------------------------------------------------------------

    def events(self, pattern: str = ">") -> List[Event]:
        """The published events whose topic matches ``pattern``."""
        return [e for t, e in self.published_events if matches(pattern, t)]

    def messages(self, pattern: str = ">") -> List[message.Message]:
        """The decoded payloads of the published events matching ``pattern``."""
        return [e.message() for e in self.events(pattern)]

    def in_flight(self, group: str) -> List[int]:
        """Sequences delivered to ``group`` and not yet acked."""
        return sorted(self._group(group).in_flight)

    def pending(self, group: str) -> List[int]:
        """Sequences due for ``group`` but not delivered (no member has credit)."""
        return [e.sequence for e in self._group(group).pending]

    def clear(self) -> None:
        """Forget ``published_events`` (the log and the groups stay)."""
        self.published_events.clear()

    async def settle(self) -> None:
        """Wait until every delayed redelivery is due and delivered."""
        loop = asyncio.get_running_loop()
        while self._timers:
            latest = max(h.when() for h in self._timers.values())
            await asyncio.sleep(max(0.0, latest - loop.time()) + 0.001)
        await self._run_handlers()

    async def health(self, service: str = "", timeout: float = 5.0) -> str:
        """Always ``"SERVING"`` while open."""
        return "NOT_SERVING" if self._closed else "SERVING"

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Ready at once."""

    # -- lifetime -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the MockEventBus is closed")

    async def close(self) -> None:
        """End every subscription; later use raises ClosedError."""
        for g in list(self._groups.values()):
            for sub in list(g.subs):
                self._leave(sub)
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        self._closed = True

    async def __aenter__(self) -> "MockEventBus":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _seqs(items) -> List[int]:
    return [i if isinstance(i, int) else i.sequence for i in items]


class MockSubscription:
    """What :meth:`MockEventBus.subscribe` returns: the same surface as
    :class:`jimbot.Subscription` (async iterator of batches, ``ready``,
    ``close``, ``group``, async context manager)."""

    def __init__(self, bus: MockEventBus, sub: _Sub, auto_ack: bool):
        self._bus = bus
        self._sub = sub
        self._auto_ack = auto_ack
        self._unacked: Optional[Batch] = None
        self.reconnects = 0

    @property
    def group(self) -> str:
        """The consumer group (``_private.N`` for a private one)."""
        return self._sub.group.name

    async def ready(self) -> "MockSubscription":
        """Subscribed already; returns self."""
        return self

    def __aiter__(self) -> "MockSubscription":
        return self

    async def __anext__(self) -> Batch:
        if self._unacked is not None:
            batch, self._unacked = self._unacked, None
            if self._sub.active:
                await batch.ack()
        if not self._sub.active and self._sub.queue.empty():
            raise StopAsyncIteration
        batch = await self._sub.queue.get()
        if batch is None:
            raise StopAsyncIteration
        if self._auto_ack:
            self._unacked = batch
        return batch

    async def close(self) -> None:
        """Leave the group; unacked events go back to it (after the last
        auto-acked batch is acked)."""
        if self._unacked is not None and self._sub.active:
            batch, self._unacked = self._unacked, None
            await batch.ack()
        self._bus._leave(self._sub)
        await self._bus._run_handlers()

    def __del__(self):
        # A loop ended by `break` and dropped: give the events back.
        if self._sub.active and not self._bus._closed:
            self._bus._leave(self._sub)

    async def __aenter__(self) -> "MockSubscription":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class MockHandlerSubscription:
    """What :meth:`MockEventBus.subscribe_handler` returns."""

    def __init__(self, bus: MockEventBus, sub: _Sub):
        self._bus = bus
        self._sub = sub

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._sub.group.name

    async def close(self) -> None:
        """Stop calling the handler; its unacked events go back to the group."""
        self._bus._leave(self._sub)
        await self._bus._run_handlers()


# --- MockInfrastructure --------------------------------------------------------------------------

#: The daemon's limits on names (include/jimbot/coord.h).
MAX_COMPONENT_BYTES = 128
MAX_REASON_BYTES = 256
MAX_POISON_KEPT = 64


class FakeClock:
    """A clock for :class:`MockInfrastructure` that moves only when told:
    ``clock()`` is the time (seconds since the epoch), ``clock.advance(s)``
    moves it and lets every mock using it act on what fell due (expiring
    warnings, expiries, budget waiters) before it returns."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = float(start)
        self._listeners: list = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        for fn in list(self._listeners):
            fn()


class _MockLease(GpuLease):
    """A lease held in a MockInfrastructure."""

    def __init__(self, mock: "MockInfrastructure", request, on_queued, seq: int):
        super().__init__(request, on_queued)
        self._mock = mock
        self.seq = seq
        self.since = mock._now()
        self.granted_at = 0.0
        self.deadline = 0.0
        self.warn_at = None

    async def release(self):
        if not self.ended.is_set():
            self._releasing = True
            self._finish(None)                  # ended before the next holder's grant
            self.release_info = self._mock._end(self)
        return self.release_info


class _QuotaWaiter:
    def __init__(self, component, count, priority, seq, deadline, future):
        self.component, self.count, self.priority = component, count, priority
        self.seq, self.deadline, self.future = seq, deadline, future


def _check_name(what: str, value, limit: int, required: bool) -> None:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string")
    if required and not value:
        raise InvalidArgumentError(f"empty {what}")
    if len(value.encode()) > limit:
        raise InvalidArgumentError(f"{what} of {len(value.encode())} bytes (at most {limit})")


# --- The request queues in MockInfrastructure ----------------------------------------------------

#: The daemon's defaults (resource_coordinator.queues.*, claude.cache_*).
DEFAULT_QUEUE = {"max_depth": 1000, "timeout_ms": 30000, "budget": "claude", "max_deliveries": 3}
DEFAULT_CACHE_TTL = 3600
DEFAULT_CACHE_MAX_BYTES = 16 << 20


class _QSubmit:
    """One waiting submit: its id, deadline (clock seconds) and future."""

    def __init__(self, request_id: str, deadline: float, timeout_ms: int, future):
        self.request_id, self.deadline, self.timeout_ms = request_id, deadline, timeout_ms
        self.future = future
        self.job: Optional["_QJob"] = None


class _QJob:
    """One distinct request with the submits waiting for it (as queue.c)."""

    def __init__(self, q: "_MockQueue", req: pb_infra.QueuedRequest, seq: int, now: float):
        self.q = q
        self.id = req.request_id
        self.type, self.payload = req.type, req.payload
        self.priority, self.seq = req.priority, seq
        self.submitter = req.submitter
        self.enqueued_wall_ms = int(time.time() * 1000)
        self.enqueued = now
        self.bypass = req.bypass_cache
        self.deliveries = 0
        self.worker: Optional["MockQueueWorker"] = None
        self.subs: List[_QSubmit] = []

    def key(self) -> tuple:
        return (self.q.name, self.type, self.payload)


class _MockQueue:
    """One configured queue: its pending jobs, workers, counters, poison."""

    def __init__(self, name: str, conf: dict):
        unknown = set(conf) - set(DEFAULT_QUEUE)
        if unknown:
            raise ValueError(f"queue '{name}': unknown settings {sorted(unknown)}")
        c = dict(DEFAULT_QUEUE, **conf)
        if c["budget"] not in ("claude", "none"):
            raise ValueError(f"queue '{name}': budget must be claude or none")
        self.name = name
        self.max_depth, self.timeout_ms = int(c["max_depth"]), int(c["timeout_ms"])
        self.budget, self.max_deliveries = c["budget"], int(c["max_deliveries"])
        self.pending: List[_QJob] = []
        self.workers: List["MockQueueWorker"] = []   # newest first, as the daemon picks
        self.submitted = self.cache_hits = self.coalesced = self.poisoned = 0
        self.poison: List[pb_infra.QueuedRequest] = []

    def insert(self, job: _QJob) -> None:
        bisect.insort(self.pending, job, key=lambda j: (-j.priority, j.seq))

    def jobs(self):
        yield from self.pending
        for w in self.workers:
            yield from w._out

    def worker_with_room(self) -> Optional["MockQueueWorker"]:
        return next((w for w in self.workers if len(w._out) < w.max_outstanding), None)


class MockQueueWorker:
    """What :meth:`MockInfrastructure.take` returns: the surface of
    :class:`jimbot.QueueWorker` (async iterator of
    :class:`jimbot.queues.QueueRequest`, ``ready``, ``close``, async context
    manager). Registered at the ``take()`` call."""

    def __init__(self, mock: "MockInfrastructure", q: _MockQueue, max_outstanding: int,
                 name: str):
        self._mock, self._q = mock, q
        self.queue, self.name = q.name, name
        self.max_outstanding = max_outstanding or 1
        self.reconnects = 0
        self._out: List[_QJob] = []
        self._inbox: asyncio.Queue = asyncio.Queue()
        self.active = True

    async def ready(self) -> "MockQueueWorker":
        """Registered already; returns self."""
        if not self.active:
            raise ClosedError("the worker was closed")
        return self

    def __aiter__(self) -> "MockQueueWorker":
        return self

    async def __anext__(self) -> QueueRequest:
        if not self.active and self._inbox.empty():
            raise StopAsyncIteration
        req = await self._inbox.get()
        if req is None:
            raise StopAsyncIteration
        return req

    def held(self) -> List[str]:
        """The ids of the requests this worker holds unanswered."""
        return [j.id for j in self._out]

    async def close(self) -> None:
        """Leave the queue (idempotent): unanswered requests go back to it,
        or are poisoned after the queue's ``max_deliveries``."""
        self._mock._worker_leave(self)

    async def __aenter__(self) -> "MockQueueWorker":
        return await self.ready()

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _MockQueues:
    """The queue engine of a MockInfrastructure (mixed into it): the rules of
    src/coord/queue.c, on the mock's clock and budget."""

    def _queues_init(self, queues: Optional[dict], cache_ttl: float, cache_max_bytes: int) -> None:
        self.cache_ttl, self.cache_max_bytes = cache_ttl, cache_max_bytes
        given = queues if queues is not None else {"claude": {}}
        self._queues = {name: _MockQueue(name, conf or {}) for name, conf in given.items()}
        self._cache = collections.OrderedDict()   # key -> (resp type, payload, expires, bytes)
        self._cache_bytes = 0
        self._qseq = itertools.count(1)
        self._started = int(time.time() * 1000)

    # -- submitting -----------------------------------------------------------------------------

    async def submit_detailed(self, queue: str, message, *, timeout: Optional[float] = None,
                              priority: int = 0, bypass_cache: bool = False,
                              request_id: Optional[str] = None, component: Optional[str] = None,
                              response_type=None, type: Optional[str] = None) -> QueueResponse:
        """As :meth:`jimbot.Infrastructure.submit_detailed`."""
        self._check_open()
        req = make_request(queue, message, type=type, timeout=timeout, priority=priority,
                           bypass_cache=bypass_cache, request_id=request_id, component=component)
        s = self._queue_submit(req)
        try:
            resp = await s.future
        finally:
            if not s.future.done() or s.future.cancelled():
                self._queue_cancel(s)
        return QueueResponse.from_wire(resp, response_type)

    def _check_request(self, req: pb_infra.QueuedRequest) -> _MockQueue:
        for what, value, limit in (("queue name", req.queue, MAX_QUEUE_BYTES),
                                   ("request id", req.request_id, MAX_REQUEST_ID_BYTES),
                                   ("type", req.type, MAX_TYPE_BYTES),
                                   ("submitter", req.submitter, MAX_SUBMITTER_BYTES)):
            if len(value.encode()) > limit:
                raise InvalidArgumentError(f"{what} longer than {limit} bytes")
        if not req.queue:
            raise InvalidArgumentError("a queue is required")
        q = self._queues.get(req.queue)
        if q is None:
            raise NotFoundError(f"no queue '{req.queue}'")
        if req.request_id and any(req.request_id == j.id or
                                  any(s.request_id == req.request_id for s in j.subs)
                                  for j in q.jobs()):
            raise AlreadyExistsError(f"request id '{req.request_id}' is in use")
        return q

    def _queue_submit(self, req: pb_infra.QueuedRequest) -> _QSubmit:
        q = self._check_request(req)
        now = self._now()
        tmo = req.timeout_ms or q.timeout_ms
        rid = req.request_id or f"{q.name}-{self._started:x}-{next(self._qseq)}"
        s = _QSubmit(rid, now + tmo / 1000.0, tmo, asyncio.get_running_loop().create_future())
        key = (q.name, req.type, req.payload)
        hit = None if req.bypass_cache or not self.cache_ttl else self._cache_get(key, now)
        if hit is not None:
            q.submitted += 1
            q.cache_hits += 1
            s.future.set_result(pb_infra.QueuedResponse(request_id=rid, type=hit[0],
                                                        payload=hit[1], cached=True))
            return s
        job = None if req.bypass_cache else next(
            (j for j in q.jobs() if not j.bypass and j.key() == key), None)
        if job is not None:
            s.job = job
            job.subs.append(s)
            if req.priority > job.priority and job.worker is None:
                q.pending.remove(job)
                job.priority = req.priority
                q.insert(job)
            q.coalesced += 1
            q.submitted += 1
            self._schedule()
            return s
        if not q.workers:
            raise UnavailableError(f"UNAVAILABLE: no worker takes queue '{q.name}'",
                                   reason="no-worker")
        if len(q.pending) >= q.max_depth:
            raise BackpressureError(f"RESOURCE_EXHAUSTED: queue '{q.name}' holds "
                                    f"{q.max_depth} requests already", retry_after_ms=1000,
                                    reason="queue-full")
        if q.budget == "claude":
            ahead = sum(1 for j in q.pending if j.priority >= req.priority)
            wait = self._time_until_units(ahead + 1, now)
            if wait > 0 and now + wait > s.deadline:
                ms = max(1, math.ceil(wait * 1000))
                raise RateLimitedError(f"RESOURCE_EXHAUSTED: no unit of budget before the "
                                       f"deadline: one frees in {ms} ms", retry_after_ms=ms,
                                       reason="rate-limited",
                                       code=grpc.StatusCode.RESOURCE_EXHAUSTED)
        stored = pb_infra.QueuedRequest()
        stored.CopyFrom(req)
        stored.request_id = rid
        job = _QJob(q, stored, next(self._qseq), now)
        s.job = job
        job.subs.append(s)
        q.insert(job)
        q.submitted += 1
        self._queue_dispatch()
        self._schedule()
        return s

    def _queue_cancel(self, s: _QSubmit) -> None:
        """The submitter went away: a job no one waits for leaves the queue
        (one a worker holds stays there)."""
        job, s.job = s.job, None
        if job is None:
            return
        if s in job.subs:
            job.subs.remove(s)
        if not job.subs and job.worker is None and job in job.q.pending:
            job.q.pending.remove(job)
        self._schedule()

    def _time_until_units(self, need: int, now: float) -> float:
        """Seconds until the window holds ``need`` more (jb__quota_time_until)."""
        self._purge(now)
        excess = self._used() + need - self.hourly_limit
        if excess <= 0:
            return 0.0
        for t, c, _ in self._spends:
            excess -= c
            if excess <= 0:
                return max(0.0, t + self.window_seconds - now)
        return float(self.window_seconds)

    # -- the cache ------------------------------------------------------------------------------

    def _cache_get(self, key: tuple, now: float):
        entry = self._cache.get(key)
        if entry is not None and entry[2] <= now:
            self._cache_drop(key)
            return None
        return entry

    def _cache_drop(self, key: tuple) -> None:
        self._cache_bytes -= self._cache.pop(key)[3]

    def _cache_put(self, job: _QJob, rtype: str, payload: bytes) -> None:
        size = len(job.type) + 1 + len(job.payload) + len(rtype) + 1 + len(payload)
        if not self.cache_ttl or not self.cache_max_bytes or size > self.cache_max_bytes:
            return
        key, now = job.key(), self._now()
        if key in self._cache:
            self._cache_drop(key)
        while self._cache and (next(iter(self._cache.values()))[2] <= now
                               or self._cache_bytes + size > self.cache_max_bytes):
            self._cache_drop(next(iter(self._cache)))
        self._cache[key] = (rtype, payload, now + self.cache_ttl, size)
        self._cache_bytes += size

    def clear_cache(self) -> None:
        """Forget every cached response."""
        self._cache.clear()
        self._cache_bytes = 0

    # -- workers --------------------------------------------------------------------------------

    def take(self, queue: str, max_outstanding: int = 1, worker: Optional[str] = None, *,
             reconnect: bool = True) -> MockQueueWorker:
        """As :meth:`jimbot.Infrastructure.take`; the worker is registered at
        this call (``ready()`` returns at once), and bad arguments raise here."""
        self._check_open()
        treq = take_request(queue, max_outstanding, worker)
        if not treq.queue or len(treq.queue.encode()) > MAX_QUEUE_BYTES:
            raise InvalidArgumentError(f"a queue name of 1..{MAX_QUEUE_BYTES} bytes is required")
        q = self._queues.get(treq.queue)
        if q is None:
            raise NotFoundError(f"no queue '{treq.queue}'")
        w = MockQueueWorker(self, q, treq.max_outstanding, treq.worker)
        q.workers.insert(0, w)
        self._queue_dispatch()
        self._schedule()
        return w

    def _worker_leave(self, w: MockQueueWorker) -> None:
        if not w.active:
            return
        w.active = False
        q = w._q
        q.workers.remove(w)
        w._inbox.put_nowait(None)
        for job in list(w._out):
            w._out.remove(job)
            job.worker = None
            if job.deliveries >= q.max_deliveries:
                self._poison(q, job)
            elif job.subs:
                q.insert(job)
        if not self._closed:
            self._queue_dispatch()
            self._schedule()

    def _poison(self, q: _MockQueue, job: _QJob) -> None:
        who = "worker that" if job.deliveries == 1 else "workers that all"
        text = (f"ABORTED: request poisoned: handed to {job.deliveries} {who} went "
                "away without answering")
        for s in job.subs:
            s.job = None
            if not s.future.done():
                s.future.set_exception(PoisonedRequestError(text, reason="poisoned"))
        job.subs = []
        q.poisoned += 1
        q.poison.append(self._task(job))
        del q.poison[:-MAX_POISON_KEPT]

    def poisoned(self, queue: str = "claude") -> List[pb_infra.QueuedRequest]:
        """The poisoned requests kept aside in ``queue``, oldest first."""
        return list(self._queues[queue].poison)

    def _task(self, job: _QJob) -> pb_infra.QueuedRequest:
        now = self._now()
        left = max((s.deadline for s in job.subs), default=now) - now
        return pb_infra.QueuedRequest(
            request_id=job.id, queue=job.q.name, type=job.type, payload=job.payload,
            priority=job.priority, timeout_ms=max(0, int(left * 1000)), submitter=job.submitter,
            enqueued_ms=job.enqueued_wall_ms, delivery_count=job.deliveries)

    def _unit(self, q: _MockQueue) -> bool:
        """Whether ``q`` may hand out a job now; spends the unit when so.
        Budget waiters (``api_quota(wait=...)``) go first."""
        if q.budget != "claude":
            return True
        self._purge(self._now())
        if self._quota_waiters or self._used() >= self.hourly_limit:
            return False
        self._spend(f"queue:{q.name}", 1)
        return True

    def _queue_dispatch(self) -> None:
        for q in self._queues.values():
            while q.pending:
                w = q.worker_with_room()
                if w is None or not self._unit(q):
                    break
                job = q.pending.pop(0)
                job.worker = w
                job.deliveries += 1
                w._out.append(job)
                w._inbox.put_nowait(QueueRequest(self._task(job), self._answer))

    async def _answer(self, req: QueueRequest, rtype: str, payload: bytes, error: str) -> None:
        """Respond: any caller may answer a request a worker holds."""
        self._check_open()
        if not req.request_id:
            raise InvalidArgumentError("a request id is required")
        job = next((j for q in self._queues.values() for w in q.workers for j in w._out
                    if j.id == req.request_id), None)
        if job is None:
            raise NotFoundError(f"no worker holds request '{req.request_id}'")
        job.worker._out.remove(job)
        job.worker = None
        if not error:
            self._cache_put(job, rtype, payload)
        for s in job.subs:
            s.job = None
            if not s.future.done():
                s.future.set_result(pb_infra.QueuedResponse(request_id=s.request_id, type=rtype,
                                                            payload=payload, error=error))
        job.subs = []
        self._queue_dispatch()
        self._schedule()

    # -- time -----------------------------------------------------------------------------------

    def _queue_tick(self, now: float) -> None:
        """Answer the submits whose deadline passed; drop pending jobs left
        without any; hand out what the window freed."""
        for q in self._queues.values():
            for job in list(q.jobs()):
                for s in [s for s in job.subs if s.deadline <= now]:
                    job.subs.remove(s)
                    s.job = None
                    if not s.future.done():
                        s.future.set_exception(DeadlineExceededError(
                            "DEADLINE_EXCEEDED: no response from a worker before the "
                            "request's timeout"))
                if not job.subs and job.worker is None:
                    q.pending.remove(job)
        self._queue_dispatch()

    def _queue_due(self) -> List[float]:
        times = [s.deadline for q in self._queues.values() for j in q.jobs() for s in j.subs]
        if self._spends and any(q.pending and q.budget == "claude" and q.worker_with_room()
                                for q in self._queues.values()):
            times.append(self._spends[0][0] + self.window_seconds)
        return times

    def _queues_status(self, st: pb_infra.ResourceStatus) -> None:
        now = self._now()
        for name in sorted(self._queues):
            q = self._queues[name]
            entries = [e for k, e in self._cache.items() if k[0] == name]
            st.queues.add(name=name, budget=q.budget, max_depth=q.max_depth,
                          depth=len(q.pending), in_flight=sum(len(w._out) for w in q.workers),
                          workers=len(q.workers),
                          oldest_wait_ms=int(max((now - j.enqueued for j in q.pending),
                                                 default=0) * 1000),
                          submitted=q.submitted, cache_hits=q.cache_hits,
                          coalesced=q.coalesced, poisoned=q.poisoned,
                          cache_bytes=sum(e[3] for e in entries), cache_entries=len(entries))

    def _queues_close(self) -> None:
        for q in self._queues.values():
            for job in list(q.jobs()):
                for s in job.subs:
                    s.job = None
                    if not s.future.done():
                        s.future.set_exception(ClosedError("the MockInfrastructure closed"))
                job.subs = []
            q.pending.clear()
            for w in list(q.workers):
                self._worker_leave(w)


class MockInfrastructure(_MockQueues, GpuApi, QueueApi, RedisApi):
    """The resource coordinator in memory, with the surface of
    :class:`jimbot.Infrastructure` (``gpu``, ``acquire_gpu``,
    ``start_gpu``, ``release_gpu``, ``api_quota``, ``status``, ``close``).

    GPU: ``devices`` devices (one by default), one lease each; waiters are
    served as jimbotd serves them: components of ``priority_components``
    first (in that order; the daemon's default is training, inference),
    then higher ``priority``, then first come; each waiter's lease gets
    ``position`` (and ``on_queued``) whenever its place changes. A lease
    lasts ``seconds`` capped by ``max_allocation_seconds``; its ``expiring``
    event is set ``expiry_warning_seconds`` before the end (0: never); at the
    end it ends with :class:`~jimbot.errors.LeaseExpiredError`. Releasing
    hands the device to the next waiter at once.

    Budget: an exact sliding window of ``window_seconds`` holding
    ``hourly_limit`` requests, optional per-component ``shares``
    (component -> limit); ``wait`` keeps a request until budget frees up,
    higher priority first then first come, strictly in that order as
    jimbotd serves them: a waiter that the budget cannot serve blocks those
    behind it (one that only its own share stops is passed over), and a
    request without ``wait`` takes its place in that order too, granted only
    when it would be served now.

    Request queues (``submit``, ``submit_detailed``, ``take``): ``queues``
    maps names to the settings of ``resource_coordinator.queues``
    (``max_depth``, ``timeout_ms``, ``budget`` "claude" or "none",
    ``max_deliveries``; the daemon's defaults, and ``{"claude": {}}`` when
    None), ``cache_ttl`` (seconds) and ``cache_max_bytes`` those of
    ``claude``. The rules are the daemon's (docs/coordinator.md "The request
    queue"): priority then arrival; UnavailableError at once without a
    worker; BackpressureError past ``max_depth``; a budget queue spends one
    unit of this mock's budget (component ``queue:NAME``) per request handed
    out, after the budget's own waiters, and refuses with RateLimitedError
    a submit that no unit could reach before its deadline; the cache and
    the coalescing of equal requests; a worker's close gives its unanswered
    requests back, and after ``max_deliveries`` they are poisoned
    (PoisonedRequestError, kept in ``poisoned(queue)``). Status fills
    ``queues``.

    Shared Redis (``redis_access``, ``redis``): ``redis`` maps component
    names to :class:`jimbot.RedisAccess` records (or to dicts of its
    fields) that ``redis_access`` returns as they are; a component not in it
    is NotFoundError, and ``redis=None`` (the default) is
    FailedPreconditionError, as jimbotd without a Redis answers. Point them
    at a Redis of the test's own: the mock provisions no ACL user.

    Time is ``clock`` (a callable giving seconds since the epoch; by default
    the real ``time.time``, timers then run on the event loop). With a
    :class:`FakeClock` nothing happens until ``clock.advance(...)``.

    Not modelled: NVML and device memory, starvation promotion,
    persistence and re-attach, max_waiters is checked but not
    ``RESOURCE_EXHAUSTED``'s retry hint; for the queues the cache file,
    reloads, and the cache's per-entry overhead in ``cache_max_bytes``.
    """

    def __init__(self, *, devices: int = 1, priority_components: Sequence[str] = ("training",
                                                                                 "inference"),
                 max_allocation_seconds: float = 300, expiry_warning_seconds: float = 30,
                 hourly_limit: int = 100, window_seconds: float = 3600,
                 shares: Optional[dict] = None, max_waiters: int = 1024, clock=None,
                 queues: Optional[dict] = None, cache_ttl: float = DEFAULT_CACHE_TTL,
                 cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES, redis: Optional[dict] = None):
        if devices < 1:
            raise ValueError("devices must be at least 1")
        self.priority_components = list(priority_components)
        self.max_allocation_seconds = max_allocation_seconds
        self.expiry_warning_seconds = expiry_warning_seconds
        self.hourly_limit = hourly_limit
        self.window_seconds = window_seconds
        self.shares = dict(shares or {})
        self.max_waiters = max_waiters
        self.clock = clock or time.time
        if isinstance(self.clock, FakeClock):
            self.clock._listeners.append(self._tick)
        self._holders: List[Optional[_MockLease]] = [None] * devices
        self._waiters: List[_MockLease] = []
        self._leases = {}
        self._seq = itertools.count(1)
        self._spends: collections.deque = collections.deque()   # (time, count, component)
        self._quota_waiters: List[_QuotaWaiter] = []
        self._timer = None
        self._closed = False
        #: Every lease ever granted, in grant order (for assertions).
        self.grants: List[GpuLease] = []
        self._queues_init(queues, cache_ttl, cache_max_bytes)
        self._redis = None if redis is None else {
            name: a if isinstance(a, RedisAccess) else RedisAccess(name, **a)
            for name, a in redis.items()}

    def _now(self) -> float:
        return self.clock()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the MockInfrastructure is closed")

    # -- GPU ------------------------------------------------------------------------------------

    def start_gpu(self, component: str, priority: int = 0, seconds: Optional[float] = None,
                  reason: str = "", pid: Optional[int] = None, *, on_queued=None) -> GpuLease:
        """As :meth:`jimbot.Infrastructure.start_gpu`."""
        self._check_open()
        _check_name("component", component, MAX_COMPONENT_BYTES, True)
        _check_name("reason", reason, MAX_REASON_BYTES, False)
        req = gpu_request(component, priority=priority, seconds=seconds, reason=reason, pid=pid)
        if len(self._waiters) >= self.max_waiters:
            raise BackpressureError(f"{len(self._waiters)} GPU waiters already")
        lease = _MockLease(self, req, on_queued, next(self._seq))
        free = self._free_device()
        if free is not None and not self._waiters:
            self._grant(lease, free)
        else:
            self._waiters.append(lease)
            self._waiters.sort(key=self._order)
            self._announce()
        self._schedule()
        return lease

    def _order(self, lease: _MockLease):
        comp = lease.component
        rank = (self.priority_components.index(comp) if comp in self.priority_components
                else len(self.priority_components))
        return (rank, -lease.request.priority, lease.seq)

    def _free_device(self) -> Optional[int]:
        for i, holder in enumerate(self._holders):
            if holder is None:
                return i
        return None

    def _announce(self) -> None:
        for pos, lease in enumerate(self._waiters, 1):
            if lease.position != pos:
                result = lease._queued(pos)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)

    def _grant(self, lease: _MockLease, device: int) -> None:
        now = self._now()
        length = self.max_allocation_seconds
        if lease.request.duration_seconds:
            length = min(length, lease.request.duration_seconds)
        lease.granted_at, lease.deadline = now, now + length
        if self.expiry_warning_seconds > 0:
            lease.warn_at = max(now, lease.deadline - self.expiry_warning_seconds)
        self._holders[device] = lease
        lease_id = f"mock-lease-{lease.seq}"
        self._leases[lease_id] = lease
        self.grants.append(lease)
        lease._grant(lease_id, device, "", int(lease.deadline * 1000), False)
        if lease.warn_at is not None and lease.warn_at <= now:
            lease._expiring(int(lease.deadline * 1000))

    def _end(self, lease: _MockLease) -> Optional[pb_infra.ReleaseGpuResponse]:
        """Take a lease (or waiter) out; the device goes to the next waiter."""
        if lease in self._waiters:
            self._waiters.remove(lease)
            self._announce()
            return None
        if lease.device is None or self._holders[lease.device] is not lease:
            return None
        self._holders[lease.device] = None
        self._leases.pop(lease.lease_id, None)
        held_ms = int((self._now() - lease.granted_at) * 1000)
        self._serve()
        self._schedule()
        return pb_infra.ReleaseGpuResponse(held_ms=held_ms, device=lease.device)

    def _serve(self) -> None:
        while self._waiters:
            free = self._free_device()
            if free is None:
                break
            self._grant(self._waiters.pop(0), free)
        self._announce()

    async def release_gpu(self, lease_id: str) -> pb_infra.ReleaseGpuResponse:
        """As :meth:`jimbot.Infrastructure.release_gpu`: the holder's lease
        ends with :class:`~jimbot.errors.LeaseLostError` (released by
        someone else) unless the holder released it itself."""
        self._check_open()
        if not lease_id:
            raise InvalidArgumentError("empty lease id")
        lease = self._leases.get(lease_id)
        if lease is None:
            raise NotFoundError(f"no GPU lease {lease_id!r} is held")
        lease._finish(LeaseLostError(f"GPU lease {lease_id} was released by someone else"))
        return self._end(lease)

    def holders(self) -> List[Optional[GpuLease]]:
        """The lease holding each device (None: free)."""
        return list(self._holders)

    def waiters(self) -> List[GpuLease]:
        """The GPU waiters in serving order."""
        return list(self._waiters)

    # -- time -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Act on everything due by now, then arm the next timer."""
        self._timer = None
        now = self._now()
        for lease in [h for h in self._holders if h is not None]:
            if lease.warn_at is not None and lease.warn_at <= now and not lease.expiring.is_set():
                lease._expiring(int(lease.deadline * 1000))
            if lease.deadline <= now:
                lease._finish(LeaseExpiredError(
                    f"GPU lease {lease.lease_id} of '{lease.component}' expired"))
                self._end(lease)
        self._serve_quota()
        self._queue_tick(now)
        self._schedule()

    def _next_due(self) -> Optional[float]:
        times = []
        for lease in self._holders:
            if lease is not None:
                times.append(lease.deadline)
                if lease.warn_at is not None and not lease.expiring.is_set():
                    times.append(lease.warn_at)
        for w in self._quota_waiters:
            times.append(w.deadline)
        if self._quota_waiters and self._spends:
            times.append(self._spends[0][0] + self.window_seconds)
        times.extend(self._queue_due())
        return min(times) if times else None

    def _schedule(self) -> None:
        if isinstance(self.clock, FakeClock) or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._next_due()
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - self._now()) + 0.001, self._tick)

    # -- the budget -----------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        while self._spends and self._spends[0][0] + self.window_seconds <= now:
            self._spends.popleft()

    def _used(self, component: Optional[str] = None) -> int:
        return sum(c for _, c, comp in self._spends if component is None or comp == component)

    def _share(self, component: str) -> int:
        share = self.shares.get(component)
        if isinstance(share, dict):
            share = share.get("limit")
        return int(share or 0)

    def _share_blocked(self, w: _QuotaWaiter) -> bool:
        share = self._share(w.component)
        return bool(share) and self._used(w.component) + w.count > share

    def _retry_after_ms(self, w: _QuotaWaiter) -> int:
        """Until the window has freed what the waiters ahead of ``w`` (not
        held by their shares) and ``w`` need, and ``w``'s share its count."""
        now = self._now()
        ahead = 0
        for a in self._quota_waiters:
            if a is w:
                break
            if not self._share_blocked(a):
                ahead += a.count
        waits = [0.0]
        needs = ((self._used() + ahead + w.count - self.hourly_limit, None),
                 (self._used(w.component) + w.count - self._share(w.component)
                  if self._share(w.component) else 0, w.component))
        for excess, comp in needs:
            for t, c, who in self._spends:
                if excess <= 0:
                    break
                if comp is None or who == comp:
                    excess -= c
                    waits.append(t + self.window_seconds - now)
        return max(1, int(-(-max(waits) * 1000 // 1)))

    def _spend(self, component: str, count: int) -> QuotaGrant:
        self._spends.append((self._now(), count, component))
        return QuotaGrant(max(0, self.hourly_limit - self._used()), self.hourly_limit)

    async def api_quota(self, component: str, count: int = 1, *, wait: Optional[float] = None,
                        priority: int = 0) -> QuotaGrant:
        """As :meth:`jimbot.Infrastructure.api_quota`. A request takes its
        place among the waiters (priority, then arrival) also without
        ``wait``: it is granted only when it would be served now."""
        self._check_open()
        _check_name("component", component, MAX_COMPONENT_BYTES, True)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidArgumentError(f"count must be a non-negative integer, not {count!r}")
        count = count or 1
        share = self._share(component)
        if count > self.hourly_limit or (share and count > share):
            raise InvalidArgumentError(
                f"{count} requests can never be granted (hourly limit {self.hourly_limit}"
                + (f", share of '{component}' {share}" if share else "") + ")")
        waiting = wait is not None and wait > 0
        if waiting and len(self._quota_waiters) >= self.max_waiters:
            raise BackpressureError(f"{len(self._quota_waiters)} budget waiters already")
        fut = asyncio.get_running_loop().create_future()
        w = _QuotaWaiter(component, count, priority, next(self._seq),
                         self._now() + (wait if waiting else 0), fut)
        self._quota_waiters.append(w)
        self._quota_waiters.sort(key=lambda x: (-x.priority, x.seq))
        self._serve_quota()
        self._schedule()
        try:
            return await fut
        finally:
            if w in self._quota_waiters:
                self._quota_waiters.remove(w)

    def _serve_quota(self) -> None:
        """Serve the waiters strictly in order (one that only its own share
        holds is passed over; one the budget cannot serve blocks the rest),
        then answer those whose wait ran out."""
        now = self._now()
        self._purge(now)
        for w in list(self._quota_waiters):
            if w.future.done():
                self._quota_waiters.remove(w)
            elif self._share_blocked(w):
                continue
            elif self._used() + w.count <= self.hourly_limit:
                self._quota_waiters.remove(w)
                w.future.set_result(self._spend(w.component, w.count))
            else:
                break
        for w in [w for w in self._quota_waiters if w.deadline <= now]:
            resp = pb_infra.AcquireApiQuotaResponse(
                granted=False, remaining=max(0, self.hourly_limit - self._used()),
                retry_after_ms=self._retry_after_ms(w), limit=self.hourly_limit)
            self._quota_waiters.remove(w)
            try:
                quota_answer(resp, w.component, w.count)
            except RateLimitedError as e:
                w.future.set_exception(e)

    # -- the shared Redis ------------------------------------------------------------------------

    async def redis_access(self, component: str) -> RedisAccess:
        """As :meth:`jimbot.Infrastructure.redis_access`, from ``redis``."""
        self._check_open()
        if not isinstance(component, str) or not component:
            raise InvalidArgumentError("component must be a non-empty string")
        if self._redis is None:
            raise FailedPreconditionError("no Redis configured (resource_coordinator.redis.url "
                                          "is empty)")
        if component not in self._redis:
            raise NotFoundError(f"no Redis namespace for component '{component}'")
        return self._redis[component]

    # -- status and lifetime --------------------------------------------------------------------

    async def status(self) -> pb_infra.ResourceStatus:
        """A ``ResourceStatus`` as jimbotd fills it (``gpu_source`` "config")."""
        self._check_open()
        now = self._now()
        self._purge(now)
        st = pb_infra.ResourceStatus(gpu_source="config", claude_hourly_limit=self.hourly_limit,
                                     claude_window_seconds=int(self.window_seconds))
        for i, lease in enumerate(self._holders):
            d = st.gpus.add(index=i, available=lease is None)
            if lease is not None:
                d.holder, d.lease_id = lease.component, lease.lease_id
                d.expires_ms = int(lease.deadline * 1000)
                d.granted_ms = int(lease.granted_at * 1000)
                d.reason, d.holder_pid = lease.request.reason, lease.request.pid
        free = [lease is None for lease in self._holders]
        st.gpu_available = any(free)
        first = next((h for h in self._holders if h is not None), None)
        if first is not None:
            st.gpu_holder, st.gpu_lease_expires_ms = first.component, int(first.deadline * 1000)
        for pos, lease in enumerate(self._waiters, 1):
            st.gpu_waiters.add(position=pos, component=lease.component,
                               priority=lease.request.priority, since_ms=int(lease.since * 1000),
                               reason=lease.request.reason)
        st.gpu_waiting = len(self._waiters)
        used = self._used()
        st.claude_requests_used = used
        st.claude_requests_remaining = max(0, self.hourly_limit - used)
        if used >= self.hourly_limit and self._spends:
            st.claude_next_slot_ms = int((self._spends[0][0] + self.window_seconds) * 1000)
        st.claude_waiting = len(self._quota_waiters)
        comps = sorted({c for _, _, c in self._spends} | set(self.shares))
        for comp in comps:
            st.claude_components.add(component=comp, used=self._used(comp),
                                     share=self._share(comp))
        self._queues_status(st)
        return st

    async def close(self) -> None:
        """Release every lease, end every waiter (ClosedError); later calls
        raise ClosedError."""
        if self._closed:
            return
        for lease in list(self._waiters) + [h for h in self._holders if h is not None]:
            await lease.release()
        for w in self._quota_waiters:
            if not w.future.done():
                w.future.set_exception(ClosedError("the MockInfrastructure closed"))
        self._quota_waiters.clear()
        self._queues_close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if isinstance(self.clock, FakeClock) and self._tick in self.clock._listeners:
            self.clock._listeners.remove(self._tick)
        self._closed = True

    async def __aenter__(self) -> "MockInfrastructure":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
