"""The C client library and jimbotctl against the real jimbotd, end to end.

The daemon is build/bin/jimbotd on a free loopback port with a temporary
data dir (jbtest.Daemon), one for the suite and one with a small
event_bus.max_group_pending for the backpressure test.

Covered: publish single, batched, asynchronous (many in flight) and buffered
(client-side batching, retried through backpressure); subscribe with a
callback and with the pull API; shared groups; ack and nack; error mapping
(bad topic, bad pattern, backpressure with its retry hint, no server);
reconnect (the daemon is killed with SIGKILL and restarted during a
subscription, which resumes); jimbotctl publish --json of a GameStateUpdate
shown decoded by jimbotctl subscribe, health, status, one-line errors and
exit codes; the header from C++.

Timeouts only keep a broken build from hanging the suite; nothing here
asserts how fast things happen.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

from google.protobuf import json_format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jbtest import TIMEOUT, Collector, Daemon, Stubs, event, free_port  # noqa: E402
from jimbot.infrastructure.serialization import game_events_pb2  # noqa: E402

SOURCE = os.environ.get("JB_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("JB_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(BUILD, "bin"))
JIMBOTCTL = os.path.join(BIN, "jimbotctl")
PROBE = os.path.join(BUILD, "tests", "client_probe")
CLIENT_CPP = os.path.join(BUILD, "tests", "client_cpp")


def ctl(addr, *args, timeout=TIMEOUT, input=None):
    return subprocess.run([JIMBOTCTL, "--addr", addr, *args], capture_output=True, text=True,
                          timeout=timeout, input=input)


def probe(addr, *args, timeout=TIMEOUT):
    r = subprocess.run([PROBE, addr, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout.splitlines()


class Lines:
    """A process whose stdout lines arrive in a queue, for reading with a timeout."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.q = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def next(self, timeout=TIMEOUT):
        line = self.q.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"process ended: {self.proc.stderr.read()}")
        return line

    def until(self, prefix, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def finish(self, timeout=TIMEOUT):
        rc = self.proc.wait(timeout=timeout)
        rest = []
        while True:
            line = self.q.get(timeout=timeout)
            if line is None:
                return rc, rest
            rest.append(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class ClientTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.addr = cls.daemon.address

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        cls.daemon.close()
        assert rc == 0, rc

    def subscriber(self, verb, pattern, group, count):
        s = Lines([PROBE, self.addr, verb, pattern, group, str(count)])
        self.addCleanup(s.close)
        self.assertEqual(s.next(), "subscribed")
        return s

    def test_health_status_and_cpp(self):
        r = ctl(self.addr, "health")
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)
        # --addr also works after the command, and a later one wins.
        for tail in (["--addr", self.addr], [f"--addr={self.addr}"]):
            r = subprocess.run([JIMBOTCTL, "--addr", "127.0.0.1:1", "health", *tail],
                               capture_output=True, text=True, timeout=TIMEOUT)
            self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)
        r = subprocess.run([JIMBOTCTL, "health", "--addr"], capture_output=True, text=True,
                           timeout=TIMEOUT)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--addr needs an address", r.stderr)
        r = ctl(self.addr, "status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsInstance(json.loads(r.stdout), dict)
        r = ctl(self.addr, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("GPUs ("), r.stdout)
        self.assertIn("\nLLM API budget\n", r.stdout)
        r = subprocess.run([CLIENT_CPP, self.addr], capture_output=True, text=True,
                           timeout=TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^seq \d+ health SERVING$")

    def test_publish_forms(self):
        rc, out = probe(self.addr, "publish", "forms.single", 3)
        self.assertEqual(rc, 0, out)
        seqs = [int(line.split()[1]) for line in out]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), 3)
        rc, out = probe(self.addr, "batch", "forms.batch", 50)
        self.assertEqual(rc, 0, out)
        seqs = [int(x) for x in out[0].split()[1:]]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + 50)))
        rc, out = probe(self.addr, "async", "forms.async", 500, 16)
        self.assertEqual((rc, out), (0, ["ok 500 failed 0"]))

    def test_buffered_publish_is_delivered_whole(self):
        sub = self.subscriber("sub-pull", "buffered.>", "buffered-g", 2500)
        rc, out = probe(self.addr, "buffered", "buffered.x", 2500, 100, 1000)
        self.assertEqual((rc, out), (0, ["flushed 2500"]))
        rc, lines = sub.finish()
        self.assertEqual(rc, 0, lines)
        events = [line for line in lines if line.startswith("event ")]
        self.assertEqual(len(events), 2500)
        self.assertEqual([e.split()[4] for e in events],
                         [f"payload-{i}" for i in range(2500)])

    def test_subscribe_callback_and_pull(self):
        cb = self.subscriber("sub-cb", "both.>", "both-cb", 10)
        pull = self.subscriber("sub-pull", "both.>", "both-pull", 10)
        rc, out = probe(self.addr, "batch", "both.x", 10)
        self.assertEqual(rc, 0, out)
        for s in (cb, pull):
            rc, lines = s.finish()
            self.assertEqual(rc, 0, lines)
            events = [line.split() for line in lines if line.startswith("event ")]
            self.assertEqual([e[4] for e in events], [f"payload-{i}" for i in range(10)])
            self.assertEqual({e[2] for e in events}, {"both.x"})
            self.assertEqual({e[3] for e in events}, {"1"})
            self.assertIn("reconnects 0", lines)

    def test_group_is_shared(self):
        a = self.subscriber("sub-pull", "shared.>", "shared-g", 1000000)
        b = self.subscriber("sub-pull", "shared.>", "shared-g", 1000000)
        for _ in range(20):
            self.assertEqual(probe(self.addr, "batch", "shared.x", 5)[0], 0)
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while len(seen) < 100 and time.monotonic() < deadline:
            for s in (a, b):
                try:
                    line = s.q.get(timeout=0.05)
                except queue.Empty:
                    continue
                if line and line.startswith("event "):
                    seen.append(int(line.split()[1]))
        self.assertEqual(len(seen), 100)
        self.assertEqual(len(set(seen)), 100, "an acked event was delivered twice")

    def test_nack_redelivers(self):
        s = Lines([PROBE, self.addr, "nack-once", "nack.>", "nack-g"])
        self.addCleanup(s.close)
        self.assertEqual(s.next(), "subscribed")
        probe(self.addr, "publish", "nack.x", 1)
        first = s.until("first ").split()
        again = s.until("again ").split()
        self.assertEqual(first[1], again[1])
        self.assertEqual((first[3], again[3]), ("1", "2"))
        self.assertEqual(s.finish()[0], 0)

    def test_errors_are_mapped(self):
        rc, out = probe(self.addr, "error", "a..b")
        self.assertEqual(out[0], "status EINVAL retry 0")
        self.assertRegex(out[1], r"^Publish: INVALID_ARGUMENT: .*a\.\.b")
        r = ctl(self.addr, "publish", "a..b", "--payload", "x")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertTrue(r.stderr.startswith("jimbotctl: publish: Publish: INVALID_ARGUMENT"))
        rc, out = probe(self.addr, "sub-cb", "a..b", "g", 1)
        self.assertEqual(rc, 1)
        self.assertTrue(any(line.startswith("ended EINVAL: Subscribe: INVALID_ARGUMENT")
                            for line in out), out)
        r = ctl(self.addr, "subscribe", "a..b")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        r = ctl(f"127.0.0.1:{free_port()}", "health")
        self.assertEqual(r.returncode, 3)
        self.assertRegex(r.stderr, r"^jimbotctl: health: Check: UNAVAILABLE: [^\n]*\n$")

    def test_jimbotctl_json_event_round_trip(self):
        """The acceptance scenario: publish --json, subscribe shows it decoded."""
        # --from all: the group may be created after the publish below.
        sub = Lines([JIMBOTCTL, "--addr", self.addr, "subscribe", "game_events.>",
                     "--group", "accept", "--count", "1", "--from", "all"])
        self.addCleanup(sub.close)
        msg = game_events_pb2.GameStateUpdate(game_id="game_123", ante=2, money=9,
                                              timestamp=1700000000000, game_sequence=4)
        msg.hand_played.hand_type = game_events_pb2.HAND_TYPE_FLUSH
        msg.hand_played.chips = 35.5
        msg.hand_played.mult = 4
        msg.hand_played.cards.add(suit=game_events_pb2.SUIT_HEARTS, rank=game_events_pb2.RANK_ACE)
        text = json_format.MessageToJson(msg, preserving_proto_field_name=True)
        r = ctl(self.addr, "publish", "game_events.hand_played", "--type",
                "jimbot.GameStateUpdate", "--json", text, "--header", "game_id=game_123",
                "--id", "accept-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        seq = int(r.stdout.split()[0])
        line = json.loads(sub.next())
        self.assertEqual(line["sequence"], seq)
        self.assertEqual(line["topic"], "game_events.hand_played")
        self.assertEqual(line["type"], "jimbot.GameStateUpdate")
        self.assertEqual(line["source"], "jimbotctl")
        self.assertEqual(line["headers"], {"game_id": "game_123"})
        self.assertEqual(line["delivery_attempt"], 1)
        self.assertEqual(line["payload"], json_format.MessageToDict(msg))
        self.assertEqual(sub.finish()[0], 0)
        r = ctl(self.addr, "publish", "game_events.hand_played", "--id", "accept-1",
                "--payload", "again")
        self.assertEqual(r.stdout, f"{seq} duplicate\n")

    def test_jimbotctl_raw_payload_and_signals(self):
        sub = Lines([JIMBOTCTL, "--addr", self.addr, "subscribe", "raw.*", "--group", "raw-g",
                     "--from", "all"])
        self.addCleanup(sub.close)
        r = ctl(self.addr, "publish", "raw.bytes", "--payload-file", "-", input="\x00\x01")
        self.assertEqual(r.returncode, 0, r.stderr)
        line = json.loads(sub.next())
        self.assertEqual(line["payload_base64"], "AAE=")
        self.assertNotIn("payload", line)
        sub.proc.send_signal(signal.SIGINT)
        self.assertEqual(sub.finish()[0], 0)

    def test_reconnect_resumes_subscription(self):
        s = self.subscriber("sub-pull", "recon.>", "recon-g", 2)
        self.assertEqual(probe(self.addr, "publish", "recon.x", 1)[0], 0)
        self.assertTrue(s.until("event ").endswith("payload-0"))
        self.daemon.kill()
        time.sleep(0.5)
        self.daemon.start()
        # The daemon kept the group: the resumed stream gets the next event,
        # or first the one above again if its ack was lost with the daemon.
        rc, out = probe(self.addr, "publish", "recon.x", 1)
        self.assertEqual(rc, 0, out)
        s.until("event ")
        rc, lines = s.finish()
        self.assertEqual(rc, 0)
        recon = [int(line.split()[1]) for line in lines if line.startswith("reconnects")]
        self.assertGreaterEqual(recon[0], 1)


class BackpressureTests(unittest.TestCase):
    """RESOURCE_EXHAUSTED from the daemon itself: a group on bp.> that holds
    HELD unacked events fills event_bus.max_group_pending, so a publish to
    bp.x is refused until it acks. The holder's ack_wait_ms of 100 is the
    hint the daemon gives (min(ack wait, 1000 ms)); its max_deliver keeps
    the held events from being dead-lettered (which would make room)."""

    HELD = 10

    def test_backpressure_hint_and_buffered_retry(self):
        d = Daemon(f"event_bus:\n  batch_window_ms: 0\n  max_group_pending: {self.HELD}\n")
        self.addCleanup(d.close)
        ch = d.channel()
        self.addCleanup(ch.close)
        stubs = Stubs(ch)
        holder = Collector(stubs, "bp.>", group="bp-hold", ack_wait_ms=100, max_deliver=1000)
        self.addCleanup(holder.cancel)
        held = list(stubs.publish(*[event("bp.x", b"held") for _ in range(self.HELD)]).sequences)
        holder.wait_count(self.HELD)

        rc, out = probe(d.address, "error", "bp.x")
        self.assertEqual(out[0], "status EBACKPRESSURE retry 100")
        self.assertRegex(out[1], r"^Publish: RESOURCE_EXHAUSTED: group 'bp-hold' holds 10 "
                                 r"unhandled events \(limit 10\)")

        # One buffered batch of ten: refused while the group is full, so a
        # bounded first flush times out with the batch still held for retry.
        buf = Lines([PROBE, d.address, "buffered", "bp.x", "10", "50", "1000", "200"])
        self.addCleanup(buf.close)
        self.assertEqual(buf.next(), "first ETIMEDOUT")
        self.assertEqual(list(stubs.ack("bp-hold", held).unknown), [])
        self.assertEqual(buf.finish(), (0, ["flushed 10"]))

        # Stored once each, in the order buffered (the holder may also have
        # been sent redeliveries: its ack wait is short).
        def stored():
            by_seq = {e.sequence: e for e in list(holder.events)}
            return [by_seq[q] for q in sorted(by_seq) if q > held[-1]]

        deadline = time.monotonic() + TIMEOUT
        while len(stored()) < 10 and time.monotonic() < deadline:
            holder.wait_count(len(holder.events) + 1, timeout=0.5)
        self.assertEqual([e.payload for e in stored()],
                         [f"payload-{i}".encode() for i in range(10)])
        self.assertEqual([e.sequence for e in stored()],
                         list(range(held[-1] + 1, held[-1] + 11)), "one request, stored once")

if __name__ == "__main__":
    unittest.main(verbosity=2)
