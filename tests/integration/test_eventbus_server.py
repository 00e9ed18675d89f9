"""The gRPC server's own behaviour around the engine, against a real jimbotd.

A configuration reload that changes event_bus.max_batch_size applies to a
running daemon; a Subscribe client that stops reading is cancelled with
RESOURCE_EXHAUSTED "slow consumer" under the limits of
event_bus.slow_consumer_bytes and event_bus.slow_consumer_ms, and its events
go back to its group. At SIGTERM (the lame-duck drain of docs/grpc.md) every
Publish in flight is answered, OK (and then its events survive a restart) or
UNAVAILABLE with a retry hint, never CANCELLED; a retry with the same ids is
not stored twice; the open batch window reaches the subscribers before their
streams end; new calls during the drain get UNAVAILABLE with retry-after-ms;
a second SIGTERM ends a drain that waits for a stalled client at once (exit 3)
without losing what was answered.

Timeouts only keep a broken daemon from hanging the suite; nothing here
asserts how fast things happen.
"""
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jbtest  # noqa: E402
from jbtest import Collector, Daemon, Stubs, event, sequences  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402
from jimbot.infra.v1 import health_pb2  # noqa: E402


def rewrite(path, text):
    """Replaces a file in one rename, so that a reload never reads half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


class Reload(unittest.TestCase):
    def test_max_batch_size_applies_live(self):
        d = Daemon("event_bus:\n  batch_window_ms: 0\n  max_batch_size: 1000\n")
        try:
            ch = d.channel()
            s = Stubs(ch)
            c = Collector(s, "rl.>", group="rl", ack=True)
            s.publish(*[event("rl.x", b"p") for _ in range(9)])
            c.wait_count(9)
            self.assertEqual(c.batch_sizes, [9])
            rewrite(d.config_path, "event_bus:\n  batch_window_ms: 0\n  max_batch_size: 3\n")
            line = d.wait_for("config reloaded")
            self.assertIn("event_bus.max_batch_size", line)
            s.publish(*[event("rl.x", b"p") for _ in range(9)])
            c.wait_count(18)
            self.assertEqual(c.batch_sizes, [9, 3, 3, 3])
            c.cancel()
            ch.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


# A subscriber in a child process, stopped (SIGSTOP) once subscribed: a
# client that stops reading. A client that only stops iterating is not one,
# since grpcio's own threads keep taking bytes off the connection.
STALLED_SUBSCRIBER = """
import sys, grpc
from jimbot.infra.v1 import event_bus_pb2 as eb, event_bus_pb2_grpc as ebg
ch = grpc.insecure_channel(sys.argv[1])
call = ebg.EventBusStub(ch).Subscribe(
    eb.SubscribeRequest(pattern=sys.argv[2] + ".>", group=sys.argv[2], max_in_flight=100000))
call.initial_metadata()
print("subscribed", flush=True)
n = 0
try:
    for batch in call:
        n += len(batch.events)
    print("ended", n, flush=True)
except grpc.RpcError as e:
    print(e.code().name, n, e.details(), flush=True)
"""


class SlowConsumer(unittest.TestCase):
    PAYLOAD = b"s" * 60000
    PER_PUBLISH = 16  # about 1 MB per request

    def run_stalled(self, d, group, reason, max_bytes):
        """Publishes to a stopped subscriber until the daemon cancels it for @reason."""
        ch = d.channel()
        s = Stubs(ch)
        child = subprocess.Popen([sys.executable, "-c", STALLED_SUBSCRIBER, d.address, group],
                                 stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "subscribed")
            os.kill(child.pid, signal.SIGSTOP)
            needle = f"reason={reason}"
            cancelled = lambda: any("slow consumer cancelled" in line and needle in line
                                    for line in d.log)
            seqs = []
            while not cancelled() and len(seqs) * len(self.PAYLOAD) < max_bytes:
                evs = [event(f"{group}.x", self.PAYLOAD) for _ in range(self.PER_PUBLISH)]
                seqs += s.publish(*evs).sequences
            line = d.wait_for("slow consumer cancelled")
            self.assertIn(needle, line)
            # Once it reads again, the client learns why its stream ended,
            # having been given only part of the events.
            os.kill(child.pid, signal.SIGCONT)
            status, n, details = child.stdout.readline().strip().split(" ", 2)
            self.assertEqual((status, details), ("RESOURCE_EXHAUSTED", "slow consumer"))
            self.assertLess(int(n), len(seqs))
        finally:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()
            child.stdout.close()
        # What the stalled stream held went back to the group: another member
        # gets every event, those it held on their second attempt.
        other = Collector(s, f"{group}.>", group=group, ack=True)
        got = other.wait_count(len(seqs))
        self.assertEqual(sorted(set(sequences(got))), list(seqs))
        self.assertIn(2, {e.delivery_attempt for e in got})
        other.cancel()
        ch.close()

    def test_queue_over_slow_consumer_bytes(self):
        # The age limit is out of reach: only the queue's size can end the
        # stream, and well before the 64 MiB default.
        d = Daemon("event_bus:\n  batch_window_ms: 0\n"
                   "  slow_consumer_bytes: 1048576\n  slow_consumer_ms: 3600000\n")
        try:
            self.run_stalled(d, "sb", "queue_full", 40 << 20)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()

    def test_send_older_than_slow_consumer_ms(self):
        # The queue limit is out of reach: only the age of the stalled send can end it.
        d = Daemon("event_bus:\n  batch_window_ms: 0\n"
                   "  slow_consumer_bytes: 1073741824\n  slow_consumer_ms: 300\n")
        try:
            self.run_stalled(d, "sm", "send_age", 40 << 20)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


def retry_after(err):
    """The "retry-after-ms" trailer of a failed call, or None."""
    return dict(err.trailing_metadata() or ()).get("retry-after-ms")


class Publisher(threading.Thread):
    """Publishes batches with unique ids on its own channel until told to stop
    or refused; keeps every outcome as (code, details, trailer, events, sequences)."""

    def __init__(self, d, name, stop, per_publish):
        super().__init__(daemon=True)
        self.ch = d.channel()
        self.stubs = Stubs(self.ch)
        self.name_ = name
        self.stop = stop
        self.per_publish = per_publish
        self.outcomes = []

    def run(self):
        k = 0
        while not self.stop.is_set():
            evs = [event("term.x", f"{self.name_}-{k}-{j}".encode() * 40,
                         id=f"{self.name_}-{k}-{j}") for j in range(self.per_publish)]
            k += 1
            try:
                r = self.stubs.publish(*evs)
            except grpc.RpcError as e:
                self.outcomes.append((e.code(), e.details(), retry_after(e), evs, None))
                return
            self.outcomes.append((grpc.StatusCode.OK, "", None, evs, list(r.sequences)))

    def finish(self):
        self.join(timeout=jbtest.TIMEOUT)
        self.ch.close()


def read_all(d, pattern, group, want_max):
    """Every stored event of @pattern up to sequence @want_max, read through a new group."""
    # Its own subchannel: grpcio shares one per target, and one left from
    # before a restart sometimes never reconnected (seen with grpcio 1.51).
    ch = grpc.insecure_channel(d.address, options=jbtest.CHANNEL_OPTIONS
                               + [("grpc.use_local_subchannel_pool", 1)])
    grpc.channel_ready_future(ch).result(timeout=jbtest.TIMEOUT)
    c = Collector(Stubs(ch), pattern, group=group, ack=True,
                  deliver_policy=eb.DELIVER_POLICY_ALL)
    deadline = time.monotonic() + jbtest.TIMEOUT
    while time.monotonic() < deadline:
        got = c.wait_count(len(c.events) + 1, timeout=1.0)
        if got and max(sequences(got)) >= want_max:
            break
    c.cancel()
    ch.close()
    return list(c.events)


class Shutdown(unittest.TestCase):
    ROUNDS = 4
    PUBLISHERS = 8
    PER_PUBLISH = 100

    def test_publishes_in_flight_at_sigterm_are_answered_and_durable(self):
        # Many publishers in flight when SIGTERM comes: each is answered OK
        # (then its events survive the restart) or UNAVAILABLE by the daemon
        # with a retry hint; none is CANCELLED by gRPC, as the old drain did.
        d = Daemon("event_bus:\n  batch_window_ms: 0\n")
        answered = {}  # payload -> sequence, for every publish answered OK
        refused, held_at_sigterm = [], 0
        ok_batches = []
        try:
            for rnd in range(self.ROUNDS):
                stop = threading.Event()
                pubs = [Publisher(d, f"r{rnd}p{i}", stop, self.PER_PUBLISH)
                        for i in range(self.PUBLISHERS)]
                for p in pubs:
                    p.start()
                # Some publishes answered first, so that the daemon is busy.
                deadline = time.monotonic() + jbtest.TIMEOUT
                while (time.monotonic() < deadline
                       and sum(len(p.outcomes) for p in pubs) < 2 * self.PUBLISHERS):
                    time.sleep(0.01)
                stop.set()
                os.kill(d.proc.pid, signal.SIGTERM)
                line = d.wait_for("gRPC server draining")
                for p in pubs:
                    p.finish()
                self.assertEqual(d.wait(), 0)
                for p in pubs:
                    for code, details, retry, evs, seqs in p.outcomes:
                        if code == grpc.StatusCode.OK:
                            self.assertEqual(len(seqs), self.PER_PUBLISH)
                            ok_batches.append((evs, seqs))
                            answered.update({e.payload: q for e, q in zip(evs, seqs)})
                            continue
                        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)
                        if details == "shutting down":
                            self.assertIsNotNone(retry, "no retry-after-ms with UNAVAILABLE")
                            self.assertGreater(int(retry), 0)
                        refused.append(evs)
                held = [w for w in line.split() if w.startswith("publishes=")]
                held_at_sigterm += int(held[0].split("=")[1]) if held else 0
                d.start()
            print(f"publishes OK {len(ok_batches)}, refused {len(refused)}, "
                  f"waiting for the bus at SIGTERM {held_at_sigterm}", file=sys.stderr)
            # Publishes were truly in flight at some SIGTERM (the daemon says
            # so), and every publish answered OK is in the log after the restarts.
            self.assertGreater(held_at_sigterm, 0)
            self.assertTrue(answered)
            stored = {e.payload: e.sequence
                      for e in read_all(d, "term.>", "term-check", max(answered.values()))}
            for payload, seq in answered.items():
                self.assertEqual(stored.get(payload), seq, payload)
            # A retry with the same ids is safe: an answered batch is not
            # stored twice, and a refused one is stored once.
            s = Stubs(d.channel())
            evs, seqs = ok_batches[-1]
            r = s.publish(*evs)
            self.assertEqual((list(r.sequences), list(r.duplicates)),
                             (seqs, [True] * len(evs)))
            if refused:
                r = s.publish(*refused[0])
                self.assertEqual(list(r.duplicates), [])
                r2 = s.publish(*refused[0])
                self.assertEqual(list(r2.sequences), list(r.sequences))
            s.channel.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()

    def test_open_window_is_flushed_to_subscribers(self):
        # A 60 s window holds the events when SIGTERM comes: the subscriber
        # gets them before its stream ends UNAVAILABLE.
        d = Daemon("event_bus:\n  batch_window_ms: 60000\n")
        try:
            ch = d.channel()
            s = Stubs(ch)
            c = Collector(s, "win.>", group="win")
            seqs = list(s.publish(*[event("win.x", b"w%d" % i) for i in range(5)]).sequences)
            os.kill(d.proc.pid, signal.SIGTERM)
            err = c.wait_error()
            self.assertIsNotNone(err)
            self.assertEqual((err.code(), err.details()),
                             (grpc.StatusCode.UNAVAILABLE, "shutting down"))
            self.assertEqual(sequences(c.events), seqs)
            ch.close()
            self.assertEqual(d.wait(), 0)
        finally:
            d.close()


class LameDuck(unittest.TestCase):
    """A subscriber that stops reading keeps the drain waiting (a grace of ten
    minutes), so the lame duck phase lasts while the test looks at it."""

    PAYLOAD = b"l" * 60000
    CONFIG = ("event_bus:\n  batch_window_ms: 0\n  drain_grace_ms: 600000\n"
              "  slow_consumer_bytes: 1073741824\n  slow_consumer_ms: 3600000\n")

    def setUp(self):
        self.d = Daemon(self.CONFIG)
        self.ch = self.d.channel()
        self.s = Stubs(self.ch)
        self.child = subprocess.Popen(
            [sys.executable, "-c", STALLED_SUBSCRIBER, self.d.address, "ld"],
            stdout=subprocess.PIPE, text=True)
        self.assertEqual(self.child.stdout.readline().strip(), "subscribed")
        os.kill(self.child.pid, signal.SIGSTOP)
        # Far more than the connection absorbs: the stream's sends stall.
        self.seqs = []
        for _ in range(32):
            self.seqs += self.s.publish(*[event("ld.x", self.PAYLOAD)
                                          for _ in range(16)]).sequences
        os.kill(self.d.proc.pid, signal.SIGTERM)
        self.d.wait_for("gRPC server draining")

    def tearDown(self):
        os.kill(self.child.pid, signal.SIGCONT)
        self.child.kill()
        self.child.wait()
        self.child.stdout.close()
        self.ch.close()
        self.d.close()

    def test_new_calls_get_unavailable_with_retry_after(self):
        ch = self.d.channel()  # a new connection is still answered
        s = Stubs(ch)
        calls = {
            "Publish": lambda: s.publish(event("ld.y", b"late", id="late-1")),
            "Ack": lambda: s.ack("ld", self.seqs[:1]),
            "Subscribe": lambda: next(iter(s.bus.Subscribe(
                eb.SubscribeRequest(pattern="ld.>", group="other"), timeout=jbtest.TIMEOUT))),
        }
        for name, call in calls.items():
            with self.assertRaises(grpc.RpcError, msg=name) as cm:
                call()
            e = cm.exception
            self.assertEqual((e.code(), e.details()),
                             (grpc.StatusCode.UNAVAILABLE, "shutting down"), name)
            self.assertGreater(int(retry_after(e) or 0), 0, name)
        r = s.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=jbtest.TIMEOUT)
        self.assertEqual(r.status, health_pb2.HealthCheckResponse.NOT_SERVING)
        ch.close()
        # Once the stalled client goes, the drain ends by itself.
        os.kill(self.child.pid, signal.SIGKILL)
        self.assertEqual(self.d.wait(), 0)
        self.d.start()
        stored = read_all(self.d, "ld.>", "ld-check", self.seqs[-1])
        self.assertEqual(sorted(sequences(stored)), self.seqs)  # "late" was not stored
        self.assertEqual(self.d.stop(), 0)

    def test_second_signal_exits_at_once(self):
        os.kill(self.d.proc.pid, signal.SIGTERM)
        self.d.wait_for("drain cut short by a second signal")
        self.assertEqual(self.d.wait(), 3)
        self.d.start()
        stored = read_all(self.d, "ld.>", "ld-check", self.seqs[-1])
        self.assertEqual(sorted(sequences(stored)), self.seqs)
        self.assertEqual(self.d.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
