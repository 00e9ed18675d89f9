"""The gRPC server's own behaviour around the engine, against a real jimbotd.

A configuration reload that changes event_bus.max_batch_size applies to a
running daemon; a Subscribe client that stops reading is cancelled with
RESOURCE_EXHAUSTED "slow consumer" under the limits of
event_bus.slow_consumer_bytes and event_bus.slow_consumer_ms, and its events
go back to its group; a Publish in flight when SIGTERM arrives is answered,
either OK (and then its events survive a restart) or UNAVAILABLE.

Timeouts only keep a broken daemon from hanging the suite; nothing here
asserts how fast things happen.
"""
import os
import signal
import subprocess
import sys
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jbtest  # noqa: E402
from jbtest import Collector, Daemon, Stubs, event, sequences  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402


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


class Shutdown(unittest.TestCase):
    ROUNDS = 6
    PER_PUBLISH = 50

    def test_publish_in_flight_at_sigterm_is_answered(self):
        d = Daemon("event_bus:\n  batch_window_ms: 0\n")
        answered = {}  # payload -> sequence, for every publish answered OK
        outcomes = []
        try:
            for i in range(self.ROUNDS):
                ch = d.channel()
                s = Stubs(ch)
                evs = [event("term.x", f"{i}-{k}".encode(), id=f"term-{i}-{k}")
                       for k in range(self.PER_PUBLISH)]
                fut = s.bus.Publish.future(eb.PublishRequest(events=evs), timeout=jbtest.TIMEOUT)
                # Right after the request, a little later each round, to land on
                # both sides of the moment the daemon stops taking calls.
                time.sleep(i * 0.002)
                os.kill(d.proc.pid, signal.SIGTERM)
                try:
                    r = fut.result(timeout=jbtest.TIMEOUT)
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
                    outcomes.append("UNAVAILABLE")
                else:
                    self.assertEqual(len(r.sequences), self.PER_PUBLISH)
                    for ev, seq in zip(evs, r.sequences):
                        answered[ev.payload] = seq
                    outcomes.append("OK")
                ch.close()
                self.assertEqual(d.wait(), 0)
                d.start()
            print("publish at SIGTERM:", outcomes, file=sys.stderr)
            # Everything answered OK is in the log after the restarts.
            ch = d.channel()
            s = Stubs(ch)
            c = Collector(s, "term.>", group="term-check", ack=True,
                          deliver_policy=eb.DELIVER_POLICY_ALL)
            if answered:
                want = max(answered.values())
                deadline = time.monotonic() + jbtest.TIMEOUT
                while time.monotonic() < deadline:
                    got = c.wait_count(len(c.events) + 1, timeout=1.0)
                    if got and max(sequences(got)) >= want:
                        break
                stored = {e.payload: e.sequence for e in c.events}
                for payload, seq in answered.items():
                    self.assertEqual(stored.get(payload), seq, payload)
            c.cancel()
            ch.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
