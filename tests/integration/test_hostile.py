"""Hostile Publish requests against a real jimbotd: memory stays within its bound.

Several threads, each on its own connection, send at the same time the shapes
that once made one request cost many times its size (docs/grpc.md "Memory"):
16 MiB of empty events (2 bytes each on the wire), one event with 8 million
empty headers, many events of 64 headers each, a topic of 15 MiB, a request
of exactly the largest size that reaches the bus, and one a byte over it.
Every one must be refused, INVALID_ARGUMENT by jimbotd or RESOURCE_EXHAUSTED
(or, for a connection gRPC sends GOAWAY under memory pressure, UNAVAILABLE)
by gRPC's memory quota, and none may be stored. Then each shape once more
alone gets jimbotd's own message, and valid publishes still work.

The bound: the daemon's peak resident memory (VmHWM in /proc/PID/status) may
exceed the peak it had after a first valid publish (the baseline) by at most
event_bus.max_request_memory_bytes plus MARGIN. MARGIN is one request of the
largest size per connection: gRPC 1.51's quota is soft (memory is read into
before it is reserved, see docs/grpc.md), so each busy connection can be
reading one message beyond it; on a quiet machine the peak stays near the
setting, on a loaded one (slower reads overlap more) it went 60 MiB past it. Before the decoder held requests to
limits, one request of empty events alone took about 900 MB. Under
AddressSanitizer (make SANITIZE=1) the bound is not checked: its quarantine
and redzones make the RSS its own; the refusals are.

Also: an Ack too large for the loop's share is refused before protobuf-c decodes
it; with event_bus.max_concurrent_streams 1 a second call on a connection
waits for the first to end, and a max_request_memory_bytes too small for two
requests of the largest size refuses to start, saying the least it needs.

Timeouts only keep a broken daemon from hanging the suite; nothing here
asserts how fast things happen.
"""
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jbtest  # noqa: E402
from jbtest import Collector, Daemon, Stubs, event  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402

MIB = 1024 * 1024
# What a call reads when gRPC closed its connection (docs/grpc.md "Memory").
CONNECTION_CLOSED = ("GOAWAY", "Broken pipe", "Connection reset", "Socket closed")
MAX_RECEIVE = 16 * MIB  # jimbotd's default largest request
REQUEST_MEMORY = 128 * MIB
THREADS = 6
MARGIN = THREADS * MAX_RECEIVE
ROUNDS = 2
CONFIG = f"""event_bus:
  batch_window_ms: 10
  max_events_per_request: 10000
  max_headers_per_event: 64
  max_request_memory_bytes: {REQUEST_MEMORY}
"""
PUBLISH = "/jimbot.infra.v1.EventBus/Publish"
# Its own connection each: gRPC shares one between channels of equal arguments.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 * MIB),
                   ("grpc.max_receive_message_length", 64 * MIB),
                   ("grpc.use_local_subchannel_pool", 1)]


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number, value):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def fill(unit, size):
    return unit * (size // len(unit))


def event_of(body):
    return field(1, body)


# name -> (request bytes, the message jimbotd gives when it sees it alone)
SHAPES = {
    "empty events": (fill(b"\x0a\x00", MAX_RECEIVE - 64),
                     "event 10000: more than 10000 events in one request"),
    "one event, 8M headers": (event_of(field(2, b"h.x") + fill(b"\x3a\x00", MAX_RECEIVE - 64)),
                              "event 0: 8388576 headers (at most 64)"),
    "events of 64 headers": (fill(event_of(field(2, b"h.x") + b"\x3a\x00" * 64),
                                  MAX_RECEIVE - 256),
                             "event 10000: more than 10000 events in one request"),
    "long topic": (event_of(field(2, b"a" * (15 * MIB))),
                   f"event 0: topic is {15 * MIB} bytes long (at most 255)"),
    # Exactly MAX_RECEIVE bytes (the payload's and the event's lengths take
    # 4 bytes each, their tags 1 each): the largest request gRPC lets through.
    "largest size, empty topic": (event_of(field(6, b"p" * (MAX_RECEIVE - 10))),
                                  "event 0: empty topic"),
}
OVER = event_of(field(6, b"p" * MAX_RECEIVE))


def under_asan(pid):
    """AddressSanitizer keeps freed memory in quarantine and adds redzones: its RSS is its own."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def raw_publish(channel, data):
    return channel.unary_unary(PUBLISH)(data, timeout=120)


class HostileRequests(unittest.TestCase):
    def start(self, config):
        self.d = Daemon(config)
        self.addCleanup(self.d.close)
        self.ch = self.d.channel()
        self.addCleanup(self.ch.close)
        self.s = Stubs(self.ch)

    def refusal_alone(self, data):
        """The status of @data sent alone, once gRPC's quota no longer refuses it. The test's
        own connection may have been one that gRPC closed under the storm's memory pressure:
        a call that finds it closed, or the channel still reconnecting, is UNAVAILABLE (the
        daemon is not draining here) and is sent again."""
        deadline = time.monotonic() + jbtest.TIMEOUT
        while True:
            try:
                raw_publish(self.ch, data)
                return grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                retry = e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     grpc.StatusCode.UNAVAILABLE)
                if not retry or time.monotonic() > deadline:
                    return e.code(), e.details()
            time.sleep(0.1)

    def test_shapes_are_refused_and_memory_stays_bounded(self):
        self.start(CONFIG)
        self.assertEqual(len(SHAPES["largest size, empty topic"][0]), MAX_RECEIVE)
        # The group exists before the storm; its member leaves (under memory
        # pressure gRPC may cancel a live stream too, docs/grpc.md "Memory").
        c = Collector(self.s, "ok.>", group="ok")
        self.assertEqual(list(self.s.publish(event("ok.x", b"first")).sequences), [1])
        self.assertEqual(len(c.wait_count(1)), 1)
        self.s.ack("ok", [1])
        c.cancel()
        pid = self.d.proc.pid
        baseline = vm(pid, "VmHWM")

        results, lock = [], threading.Lock()

        def attack(k):
            ch = grpc.insecure_channel(self.d.address, options=CHANNEL_OPTIONS)
            try:
                shapes = list(SHAPES.items()) + [("over the limit", (OVER, None))]
                for r in range(ROUNDS):
                    for name, (data, _) in shapes[k % len(shapes):] + shapes[:k % len(shapes)]:
                        try:
                            raw_publish(ch, data)
                            got = ("OK", "")
                        except grpc.RpcError as e:
                            got = (e.code().name, e.details() or "")
                        with lock:
                            results.append((name, got))
            finally:
                ch.close()

        threads = [threading.Thread(target=attack, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        self.assertFalse(any(t.is_alive() for t in threads))
        peak = vm(pid, "VmHWM")
        print(f"test_hostile: baseline {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, "
              f"bound {(baseline + REQUEST_MEMORY + MARGIN) / MIB:.1f} MiB", file=sys.stderr)
        codes = {}
        for name, (code, details) in results:
            codes.setdefault(code, 0)
            codes[code] += 1
            self.assertIn(code, ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE"),
                          f"{name}: {code} {details}")
            if code == "UNAVAILABLE":
                # The connection was closed by gRPC under memory pressure: the client hears
                # the GOAWAY, or, when it was still writing its 16 MiB request, its write
                # fails first (EPIPE, ECONNRESET).
                self.assertTrue(any(w in details for w in CONNECTION_CLOSED), f"{name}: {details}")
        print(f"test_hostile: {len(results)} requests: {codes}", file=sys.stderr)
        self.assertEqual(len(results), THREADS * ROUNDS * (len(SHAPES) + 1))
        if under_asan(pid):
            print("test_hostile: the RSS bound is not checked under AddressSanitizer",
                  file=sys.stderr)
        else:
            self.assertLessEqual(peak - baseline, REQUEST_MEMORY + MARGIN,
                                 f"peak {peak} bytes, baseline {baseline}")

        # Alone, each shape reaches jimbotd and gets its own message, once
        # gRPC has let go of the attackers' connections.
        for name, (data, message) in SHAPES.items():
            code, details = self.refusal_alone(data)
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {details}")
            self.assertEqual(details, message, name)
        with self.assertRaises(grpc.RpcError) as cm:
            raw_publish(self.ch, OVER)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)

        # Nothing hostile was stored, and valid publishes still work.
        c = Collector(self.s, "ok.>", group="ok", ack=True)
        self.assertEqual(list(self.s.publish(event("ok.x", b"after")).sequences), [2])
        batch = [event("ok.y", b"x" * 1000) for _ in range(1000)]
        self.assertEqual(list(self.s.publish(*batch).sequences), list(range(3, 1003)))
        got = c.wait_count(1001)
        self.assertIsNone(c.error)
        self.assertEqual([e.sequence for e in got], list(range(2, 1003)))
        self.assertEqual(got[0].payload, b"after")
        c.cancel()
        self.assertEqual(self.d.stop(), 0)

    def test_streams_per_connection_are_capped(self):
        """With max_concurrent_streams 1 a second call on a connection waits for the first."""
        self.start("event_bus:\n  max_concurrent_streams: 1\n  batch_window_ms: 0\n")
        other = grpc.insecure_channel(self.d.address, options=CHANNEL_OPTIONS)
        self.addCleanup(other.close)
        sb, so = self.s, Stubs(other)
        c = Collector(sb, "cap.>", group="cap")  # holds busy's one stream
        waiting = sb.bus.Publish.future(eb.PublishRequest(events=[event("cap.a", b"1")]),
                                        timeout=60)
        self.assertEqual(list(so.publish(event("cap.b", b"2")).sequences), [1])
        self.assertEqual([e.payload for e in c.wait_count(1)], [b"2"])
        self.assertFalse(waiting.done())
        c.cancel()
        self.assertEqual(list(waiting.result(timeout=60).sequences), [2])
        self.assertEqual(self.d.stop(), 0)


    def test_a_large_ack_is_refused_before_decoding(self):
        """protobuf-c decodes an Ack's packed sequences to 8 bytes per byte: one over the
        loop's share (a ninth of it) is refused unread; a small one is decoded as before."""
        self.start(CONFIG)
        ack = self.ch.unary_unary("/jimbot.infra.v1.EventBus/Ack")
        big = field(1, b"g") + field(2, b"\x01" * (6 * MIB))
        with self.assertRaises(grpc.RpcError) as cm:
            ack(big, timeout=120)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertRegex(cm.exception.details(),
                         rf"^AckRequest of {len(big)} bytes: over the limit of \d+ bytes$")
        with self.assertRaises(grpc.RpcError) as cm:
            ack(field(1, b"g") + field(2, b"\x01\x02"), timeout=120)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)  # decoded: no group g
        self.assertEqual(self.d.stop(), 0)


class Budget(unittest.TestCase):
    def test_a_budget_below_two_requests_refuses_to_start(self):
        """16 MiB cannot hold the decoding of one 16 MiB request and two more in gRPC."""
        with tempfile.TemporaryDirectory(prefix="jbtest-") as tmp:
            config = os.path.join(tmp, "infrastructure.yaml")
            with open(config, "w") as f:
                f.write("event_bus:\n  max_request_memory_bytes: 16777216\n")
            p = subprocess.run([jbtest.JIMBOTD, "-c", config, "--env", "it", "--data-dir",
                                os.path.join(tmp, "var"), "--listen", "127.0.0.1:0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               timeout=jbtest.TIMEOUT)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("jimbotd: max_request_memory_bytes (event_bus.max_request_memory_bytes) "
                      "is 16777216; requests of up to 16777216 bytes, with the event and header "
                      "limits, need at least 78408864", p.stderr)


if __name__ == "__main__":
    unittest.main()
