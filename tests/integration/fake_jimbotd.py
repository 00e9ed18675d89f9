"""fake_jimbotd: a STAND-IN for jimbotd's gRPC server, for the client tests.

The real gRPC server of jimbotd is being written in parallel (branch `grpc`).
Until it lands, the client library and jimbotctl are tested against this
small Python (grpcio) server, which answers the same services with the same
status mapping:

* jimbot.infra.v1.EventBus: Publish (all or none; INVALID_ARGUMENT for a bad
  topic or an oversized event; RESOURCE_EXHAUSTED with the trailing metadata
  "retry-after-ms" for backpressure), Subscribe (server stream of
  EventBatch, consumer groups, max_in_flight credits, redelivery of unacked
  events when a stream ends), Ack and Nack (NOT_FOUND for an unknown group);
* grpc.health.v1.Health: Check, Watch;
* jimbot.infra.v1.Infrastructure: GetResourceStatus (fixed values); the
  other methods answer UNIMPLEMENTED.

A private group (Subscribe with no group) is named in the initial metadata
"jimbot-group", so that the client can ack its events.

It keeps everything in memory: a restart forgets events and groups. It is
NOT the bus: no durability, no dead letters, no aggregation, no windows
beyond "send what is ready". Test hook (fake only): publishing to a topic
"fake.backpressure.N" is refused with backpressure (retry-after-ms 30) N
times, then accepted.

    fake_jimbotd.py --listen 127.0.0.1:PORT

prints "listening on ADDR" once it serves; SIGTERM stops it (streams end
with UNAVAILABLE, as jimbotd does).
"""
import argparse
import collections
import signal
import sys
import threading
import time
import uuid
from concurrent import futures

import grpc

from jimbot.infra.v1 import event_bus_pb2, event_bus_pb2_grpc
from jimbot.infra.v1 import health_pb2, health_pb2_grpc
from jimbot.infra.v1 import infrastructure_pb2, infrastructure_pb2_grpc

MAX_EVENT_BYTES = 1 << 20
MAX_BATCH = 1000
DEFAULT_IN_FLIGHT = 1000


def topic_error(topic, pattern=False):
    """The reason a topic (or pattern) is invalid, or None."""
    what = "pattern" if pattern else "topic"
    if not topic:
        return f"{what} is empty"
    if len(topic) > 255:
        return f"{what} is longer than 255 bytes"
    tokens = topic.split(".")
    if len(tokens) > 16:
        return f"{what} '{topic}' has more than 16 tokens"
    pos = 0
    for i, t in enumerate(tokens):
        if not t:
            return f"{what} '{topic}' has an empty token at byte {pos}"
        if pattern and t in ("*", ">"):
            if t == ">" and i != len(tokens) - 1:
                return f"pattern '{topic}': '>' must be the last token"
        elif any(c in t for c in "*> ") or not t.isprintable():
            return f"{what} '{topic}' has a bad character in token '{t}'"
        pos += len(t) + 1
    return None


def matches(pattern, topic):
    p, t = pattern.split("."), topic.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


class Group:
    def __init__(self, name, pattern, cursor, private):
        self.name = name
        self.pattern = pattern
        self.cursor = cursor        # next log index (0-based) to look at
        self.due = collections.deque()  # events to redeliver
        self.in_flight = {}         # sequence -> (event, subscriber id)
        self.attempts = collections.Counter()
        self.private = private


class Bus:
    def __init__(self):
        self.lock = threading.Condition()
        self.log = []               # Event messages, sequence = index + 1
        self.ids = {}
        self.groups = {}
        self.refusals = collections.Counter()
        self.closing = False


class EventBus(event_bus_pb2_grpc.EventBusServicer):
    def __init__(self, bus):
        self.bus = bus

    def Publish(self, request, context):
        bus = self.bus
        if bus.closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        for i, ev in enumerate(request.events):
            why = topic_error(ev.topic)
            if why:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"event {i}: {why}")
            if ev.ByteSize() > MAX_EVENT_BYTES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"event {i}: {ev.ByteSize()} bytes, more than {MAX_EVENT_BYTES}")
        if not request.events:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no events")
        with bus.lock:
            for ev in request.events:
                if ev.topic.startswith("fake.backpressure."):
                    limit = int(ev.topic.rsplit(".", 1)[1])
                    if bus.refusals[ev.topic] < limit:
                        bus.refusals[ev.topic] += 1
                        context.set_trailing_metadata((("retry-after-ms", "30"),))
                        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      "group backlog full, retry later")
            seqs, dups = [], []
            now = int(time.time() * 1000)
            for ev in request.events:
                if ev.id and ev.id in bus.ids:
                    seqs.append(bus.ids[ev.id])
                    dups.append(True)
                    continue
                stored = event_bus_pb2.Event()
                stored.CopyFrom(ev)
                stored.sequence = len(bus.log) + 1
                stored.delivery_attempt = 0
                if not stored.timestamp_ms:
                    stored.timestamp_ms = now
                bus.log.append(stored)
                if ev.id:
                    bus.ids[ev.id] = stored.sequence
                seqs.append(stored.sequence)
                dups.append(False)
            bus.lock.notify_all()
        return event_bus_pb2.PublishResponse(sequences=seqs, duplicates=dups)

    def Subscribe(self, request, context):
        bus = self.bus
        why = topic_error(request.pattern, pattern=True)
        if why:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
        me = uuid.uuid4().hex
        with bus.lock:
            name = request.group or f"_private.{me[:12]}"
            g = bus.groups.get(name)
            if g is None:
                start = {0: len(bus.log), 1: 0,
                         2: max(0, request.start_sequence - 1)}.get(request.deliver_policy, 0)
                if request.deliver_policy == 3:
                    start = next((i for i, e in enumerate(bus.log)
                                  if e.timestamp_ms >= request.start_time_ms), len(bus.log))
                g = Group(name, request.pattern, start, not request.group)
                bus.groups[name] = g
            elif g.pattern != request.pattern:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"group '{name}' has pattern '{g.pattern}'")
        context.send_initial_metadata((("jimbot-group", name),))
        credits = request.max_in_flight or DEFAULT_IN_FLIGHT
        try:
            while context.is_active():
                with bus.lock:
                    if bus.closing:
                        break
                    held = sum(1 for _, s in g.in_flight.values() if s == me)
                    out = []
                    while g.due and held + len(out) < credits and len(out) < MAX_BATCH:
                        out.append(g.due.popleft())
                    while (g.cursor < len(bus.log) and held + len(out) < credits
                           and len(out) < MAX_BATCH):
                        ev = bus.log[g.cursor]
                        g.cursor += 1
                        if matches(g.pattern, ev.topic):
                            out.append(ev)
                    if not out:
                        bus.lock.wait(0.05)
                        continue
                    batch = event_bus_pb2.EventBatch()
                    for ev in out:
                        g.attempts[ev.sequence] += 1
                        g.in_flight[ev.sequence] = (ev, me)
                        d = batch.events.add()
                        d.CopyFrom(ev)
                        d.delivery_attempt = g.attempts[ev.sequence]
                yield batch
        finally:
            with bus.lock:
                back = sorted(s for s, (_, sub) in g.in_flight.items() if sub == me)
                for s in back:
                    g.due.append(g.in_flight.pop(s)[0])
                if g.private:
                    bus.groups.pop(name, None)
                bus.lock.notify_all()
        if bus.closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    def _group(self, name, context):
        g = self.bus.groups.get(name)
        if g is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown group '{name}'")
        return g

    def Ack(self, request, context):
        with self.bus.lock:
            g = self._group(request.group, context)
            unknown = [s for s in request.sequences if g.in_flight.pop(s, None) is None]
            self.bus.lock.notify_all()
        return event_bus_pb2.AckResponse(unknown=unknown)

    def Nack(self, request, context):
        with self.bus.lock:
            g = self._group(request.group, context)
            unknown = []
            for s in request.sequences:
                item = g.in_flight.pop(s, None)
                if item is None:
                    unknown.append(s)
                else:
                    g.due.append(item[0])
            self.bus.lock.notify_all()
        return event_bus_pb2.NackResponse(unknown=unknown)


SERVICES = ("", "jimbot.infra.v1.EventBus", "jimbot.infra.v1.Infrastructure",
            "grpc.health.v1.Health")


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, bus):
        self.bus = bus

    def _status(self, service, context):
        if service not in SERVICES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{service}'")
        serving = health_pb2.HealthCheckResponse.SERVING
        if self.bus.closing:
            serving = health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=serving)

    def Check(self, request, context):
        return self._status(request.service, context)

    def Watch(self, request, context):
        yield self._status(request.service, context)
        while context.is_active() and not self.bus.closing:
            time.sleep(0.1)


class Infrastructure(infrastructure_pb2_grpc.InfrastructureServicer):
    def GetResourceStatus(self, request, context):
        st = infrastructure_pb2.ResourceStatus(gpu_available=True,
                                               claude_requests_remaining=100)
        st.queue_depths["claude"] = 0
        st.breakers.add(name="redis", state=infrastructure_pb2.BREAKER_STATE_CLOSED)
        return st


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:50051")
    args = ap.parse_args()
    bus = Bus()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    event_bus_pb2_grpc.add_EventBusServicer_to_server(EventBus(bus), server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(bus), server)
    infrastructure_pb2_grpc.add_InfrastructureServicer_to_server(Infrastructure(), server)
    if server.add_insecure_port(args.listen) == 0:
        print(f"fake_jimbotd: cannot listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()
    print(f"listening on {args.listen}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    with bus.lock:
        bus.closing = True
        bus.lock.notify_all()
    server.stop(1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
