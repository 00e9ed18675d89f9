"""The EventBus, Health and GetResourceStatus services of a real jimbotd, over gRPC.

Python grpcio clients against the daemon on a free loopback port with a
temporary data dir: round trip, fan-out to groups and sharing within one,
credits (max_in_flight), deliver policies, a subscriber killed mid-stream,
backpressure, malformed bytes to every method, bad input, dead letters,
health, and SIGTERM draining. Each test uses its own topics and groups, so
the tests of one daemon do not see each other's events.

Timeouts only keep a broken daemon from hanging the suite; nothing here
asserts how fast things happen.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jbtest  # noqa: E402
from jbtest import Collector, Daemon, Stubs, event, sequences  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402
from jimbot.infra.v1 import health_pb2  # noqa: E402
from jimbot.infra.v1 import infrastructure_pb2  # noqa: E402

CONFIG = """\
event_bus:
  batch_window_ms: 0
  max_event_bytes: 65536
resource_coordinator:
  claude:
    hourly_limit: 42
"""

# Not a valid protobuf message of any type: field 1, length 5, 2 bytes follow.
MALFORMED = b"\x0a\x05ab"


class EventBus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(CONFIG)
        cls.ch = cls.daemon.channel()
        cls.s = Stubs(cls.ch)

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        rc = cls.daemon.stop()
        cls.daemon.close()
        assert rc == 0, rc

    def test_round_trip(self):
        c = Collector(self.s, "rt.>", group="rt")
        r = self.s.publish(event("rt.a", b"one", id="rt-1", type="t.One", source="it",
                                 headers={"k": "v"}),
                           event("rt.b", b"two"), event("rt.a.c", b"three"))
        self.assertEqual(len(r.sequences), 3)
        self.assertEqual(r.sequences[1], r.sequences[0] + 1)
        self.assertEqual(r.sequences[2], r.sequences[0] + 2)
        got = c.wait_count(3)
        self.assertEqual(sequences(got), list(r.sequences))
        self.assertEqual([e.payload for e in got], [b"one", b"two", b"three"])
        first = got[0]
        self.assertEqual((first.id, first.topic, first.type, first.source),
                         ("rt-1", "rt.a", "t.One", "it"))
        self.assertEqual(dict(first.headers), {"k": "v"})
        self.assertEqual(first.delivery_attempt, 1)
        self.assertGreater(first.timestamp_ms, 0)
        a = self.s.ack("rt", r.sequences)
        self.assertEqual(list(a.unknown), [])
        # Acking again: nothing was in flight any more.
        a = self.s.ack("rt", r.sequences[:1])
        self.assertEqual(list(a.unknown), list(r.sequences[:1]))
        c.cancel()

    def test_duplicate_id(self):
        r1 = self.s.publish(event("dup.a", b"x", id="dup-1"))
        r2 = self.s.publish(event("dup.a", b"x", id="dup-1"))
        self.assertEqual(r2.sequences, r1.sequences)
        self.assertEqual(list(r2.duplicates), [True])

    def test_fan_out_and_sharing(self):
        a = Collector(self.s, "fan.>", group="fan-a", ack=True)
        b1 = Collector(self.s, "fan.>", group="fan-b", ack=True)
        b2 = Collector(self.s, "fan.>", group="fan-b", ack=True)
        seqs = []
        for i in range(20):  # one publish each: separate batches, shared round-robin
            seqs += self.s.publish(event("fan.x", str(i).encode())).sequences
        self.assertEqual(sorted(sequences(a.wait_count(20))), seqs)
        deadline = time.monotonic() + jbtest.TIMEOUT
        while len(b1.events) + len(b2.events) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        s1, s2 = set(sequences(b1.events)), set(sequences(b2.events))
        self.assertEqual(s1 & s2, set())
        self.assertEqual(s1 | s2, set(seqs))
        self.assertTrue(s1 and s2, "both members of the group got a share")
        for c in (a, b1, b2):
            c.cancel()

    def test_max_in_flight(self):
        c = Collector(self.s, "mif.>", group="mif", max_in_flight=5)
        seqs = self.s.publish(*[event("mif.x", b"p") for _ in range(20)]).sequences
        got = c.wait_count(5)
        # Nothing more comes while the five are unacked; a later publish proves
        # the stream is live and its events are held back too.
        self.s.publish(event("mif.x", b"late"))
        time.sleep(0.5)
        self.assertEqual(sequences(c.events), list(seqs[:5]))
        self.s.ack("mif", sequences(got))
        got = c.wait_count(10)
        self.assertEqual(sequences(got), list(seqs[:10]))
        c.cancel()

    def test_deliver_policies(self):
        old = self.s.publish(*[event("pol.x", str(i).encode()) for i in range(5)]).sequences
        all_ = Collector(self.s, "pol.>", group="pol-all",
                         deliver_policy=eb.DELIVER_POLICY_ALL)
        self.assertEqual(sequences(all_.wait_count(5)), list(old))
        frm = Collector(self.s, "pol.>", group="pol-from",
                        deliver_policy=eb.DELIVER_POLICY_FROM_SEQUENCE, start_sequence=old[2])
        self.assertEqual(sequences(frm.wait_count(3)), list(old[2:]))
        new = Collector(self.s, "pol.>", group="pol-new")
        fresh = self.s.publish(event("pol.x", b"new")).sequences[0]
        self.assertEqual(sequences(new.wait_count(1)), [fresh])
        for c in (all_, frm, new):
            c.cancel()

    def test_killed_subscriber_gives_events_back(self):
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import grpc, sys
            from jimbot.infra.v1 import event_bus_pb2 as eb, event_bus_pb2_grpc as ebg
            ch = grpc.insecure_channel("{self.daemon.address}")
            stub = ebg.EventBusStub(ch)
            call = stub.Subscribe(eb.SubscribeRequest(pattern="kill.>", group="kill"))
            call.initial_metadata()
            print("subscribed", flush=True)
            n = 0
            for batch in call:
                n += len(batch.events)
                print("got", n, flush=True)
            """)], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "subscribed")
            seqs = self.s.publish(*[event("kill.x", b"p") for _ in range(10)]).sequences
            while True:
                line = child.stdout.readline()
                self.assertTrue(line, "the child subscriber ended early")
                if line.strip() == "got 10":
                    break
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        other = Collector(self.s, "kill.>", group="kill", ack=True)
        got = other.wait_count(10)
        self.assertEqual(sorted(sequences(got)), list(seqs))
        self.assertEqual({e.delivery_attempt for e in got}, {2})
        other.cancel()

    def test_malformed_bytes_change_nothing(self):
        before = self.s.publish(event("mal.x", b"before")).sequences[0]
        unary = ["/jimbot.infra.v1.EventBus/Publish", "/jimbot.infra.v1.EventBus/Ack",
                 "/jimbot.infra.v1.EventBus/Nack", "/grpc.health.v1.Health/Check",
                 "/jimbot.infra.v1.Infrastructure/GetResourceStatus"]
        for path in unary:
            with self.subTest(path=path):
                with self.assertRaises(grpc.RpcError) as cm:
                    self.ch.unary_unary(path)(MALFORMED, timeout=jbtest.TIMEOUT)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("malformed", cm.exception.details())
        for path in ["/jimbot.infra.v1.EventBus/Subscribe", "/grpc.health.v1.Health/Watch"]:
            with self.subTest(path=path):
                with self.assertRaises(grpc.RpcError) as cm:
                    list(self.ch.unary_stream(path)(MALFORMED, timeout=jbtest.TIMEOUT))
                self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        after = self.s.publish(event("mal.x", b"after")).sequences[0]
        self.assertEqual(after, before + 1)

    def test_bad_input(self):
        before = self.s.publish(event("bad.x", b"before")).sequences[0]
        cases = [
            (event("bad..x"), "empty token"),
            (event("bad.*"), "bad.*"),
            (event("bad.big", b"x" * 70000), "bytes"),
        ]
        for ev, needle in cases:
            with self.subTest(topic=ev.topic):
                with self.assertRaises(grpc.RpcError) as cm:
                    self.s.publish(event("bad.ok", b"fine"), ev)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn(needle, cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            self.s.bus.Publish(eb.PublishRequest(), timeout=jbtest.TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError) as cm:
            list(self.s.bus.Subscribe(eb.SubscribeRequest(pattern=""), timeout=jbtest.TIMEOUT))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError) as cm:
            self.s.ack("no-such-group", [1])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        # All or none: the good first event of each refused request was not stored.
        after = self.s.publish(event("bad.x", b"after")).sequences[0]
        self.assertEqual(after, before + 1)

    def test_unknown_method(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.ch.unary_unary("/jimbot.infra.v1.EventBus/Nope")(b"", timeout=jbtest.TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_health(self):
        r = self.s.health.Check(health_pb2.HealthCheckRequest(), timeout=jbtest.TIMEOUT)
        self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING)
        r = self.s.health.Check(health_pb2.HealthCheckRequest(service="jimbot.infra.v1.EventBus"),
                                timeout=jbtest.TIMEOUT)
        self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING)
        with self.assertRaises(grpc.RpcError) as cm:
            self.s.health.Check(health_pb2.HealthCheckRequest(service="no.Such"),
                                timeout=jbtest.TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        w = self.s.health.Watch(health_pb2.HealthCheckRequest())
        self.assertEqual(next(w).status, health_pb2.HealthCheckResponse.SERVING)
        w.cancel()

    def test_resource_status(self):
        c = Collector(self.s, "rs.>", group="rs-group", max_in_flight=1)
        self.s.publish(event("rs.x"), event("rs.x"), event("rs.x"))
        c.wait_count(1)
        r = self.s.infra.GetResourceStatus(infrastructure_pb2.GetResourceStatusRequest(),
                                           timeout=jbtest.TIMEOUT)
        # The configured budget, nothing spent yet; the group's pending events.
        self.assertEqual((r.claude_hourly_limit, r.claude_requests_remaining), (42, 42))
        self.assertEqual(r.queue_depths["rs-group"], 3)
        spent = self.s.infra.AcquireApiQuota(
            infrastructure_pb2.AcquireApiQuotaRequest(component="rs", count=2),
            timeout=jbtest.TIMEOUT)
        self.assertTrue(spent.granted)
        r = self.s.infra.GetResourceStatus(infrastructure_pb2.GetResourceStatusRequest(),
                                           timeout=jbtest.TIMEOUT)
        self.assertEqual((r.claude_requests_remaining, r.claude_requests_used), (40, 2))
        c.cancel()

    def test_dead_letters(self):
        dlq = Collector(self.s, "dlq.dl.>", group="dl-dlq", ack=True)
        c = Collector(self.s, "dl.>", group="dl", max_deliver=2)
        seq = self.s.publish(event("dl.x", b"poison", headers={"trace": "t1"})).sequences[0]
        for attempt in (1, 2):
            got = c.wait_count(attempt)
            self.assertEqual(got[-1].sequence, seq)
            self.assertEqual(got[-1].delivery_attempt, attempt)
            r = self.s.bus.Nack(eb.NackRequest(group="dl", sequences=[seq]),
                                timeout=jbtest.TIMEOUT)
            self.assertEqual(list(r.unknown), [])
        dead = dlq.wait_count(1)[0]
        self.assertEqual(dead.topic, "dlq.dl.x")
        self.assertEqual(dead.payload, b"poison")
        self.assertEqual(dead.headers["trace"], "t1")
        self.assertEqual(dead.headers["jimbot-dlq-group"], "dl")
        self.assertEqual(dead.headers["jimbot-dlq-sequence"], str(seq))
        c.cancel()
        dlq.cancel()


class Backpressure(unittest.TestCase):
    def test_full_group_gets_resource_exhausted(self):
        d = Daemon("event_bus:\n  batch_window_ms: 0\n  max_group_pending: 5\n")
        try:
            ch = d.channel()
            s = Stubs(ch)
            c = Collector(s, "bp.>", group="bp", max_in_flight=1)
            ok = 0
            for _ in range(20):
                try:
                    s.publish(event("bp.x", b"p"))
                    ok += 1
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                    self.assertIn("bp", e.details())
                    retry = dict(e.trailing_metadata()).get("retry-after-ms")
                    self.assertIsNotNone(retry)
                    self.assertGreater(int(retry), 0)
                    break
            else:
                self.fail("never refused")
            self.assertEqual(ok, 5)
            # Another topic, which that group does not match, still goes through.
            s.publish(event("other.x"))
            # Once the group catches up, publishing works again.
            s.ack("bp", sequences(c.wait_count(1)))
            s.publish(event("bp.x", b"p"))
            c.cancel()
            ch.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


class Lifecycle(unittest.TestCase):
    def test_port_taken(self):
        d = Daemon("")
        try:
            r = subprocess.run([jbtest.JIMBOTD, "-c", d.config_path, "--data-dir",
                                os.path.join(d.tmp, "var2"), "--listen", d.address],
                               capture_output=True, text=True, timeout=jbtest.TIMEOUT)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f"cannot listen on {d.address}", r.stderr)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()

    def test_unix_socket(self):
        d = Daemon("", unix=True)
        try:
            self.assertTrue(any(d.address in line for line in d.log), d.log)
            ch = d.channel()
            r = Stubs(ch).health.Check(health_pb2.HealthCheckRequest(), timeout=jbtest.TIMEOUT)
            self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING)
            ch.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()

    def test_sigterm_drains_and_restart_delivers(self):
        d = Daemon("event_bus:\n  batch_window_ms: 50\n")
        try:
            ch = d.channel()
            s = Stubs(ch)
            c = Collector(s, "drain.>", group="drain")
            seq = s.publish(event("drain.x", b"kept", id="drain-1")).sequences[0]
            c.wait_count(1)
            w = s.health.Watch(health_pb2.HealthCheckRequest())
            self.assertEqual(next(w).status, health_pb2.HealthCheckResponse.SERVING)
            self.assertEqual(d.stop(signal.SIGTERM), 0)
            err = c.wait_error()
            self.assertIsNotNone(err)
            self.assertEqual(err.code(), grpc.StatusCode.UNAVAILABLE)
            statuses = []
            try:
                for r in w:
                    statuses.append(r.status)
            except grpc.RpcError:
                pass
            self.assertEqual(statuses[-1:], [health_pb2.HealthCheckResponse.NOT_SERVING])
            ch.close()

            d.start()
            ch = d.channel()
            s = Stubs(ch)
            # Delivered before the restart but never acked: delivered again.
            c = Collector(s, "drain.>", group="drain", ack=True)
            got = c.wait_count(1)
            self.assertEqual(got[0].sequence, seq)
            self.assertEqual(got[0].payload, b"kept")
            c.cancel()
            ch.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
