"""``MockEventBus``: the event bus in memory, for component tests.

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
import itertools
import time
from typing import Iterable, List, Optional, Tuple, Union

from google.protobuf import message

from .errors import ClosedError, InvalidArgumentError, NotFoundError
from .event_bus import Batch, DeliverPolicy, Event, make_event
from .infra.v1 import event_bus_pb2 as pb
from .topics import matches, validate_pattern, validate_topic

__all__ = ["MockEventBus", "MockSubscription", "MockHandlerSubscription"]

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
