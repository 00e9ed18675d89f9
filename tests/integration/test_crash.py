"""Crash test: no acknowledged publish is lost across kill -9 of jimbotd.

Four publisher threads publish batches of events with unique ids as fast as
they can, and record every event whose Publish returned OK. Meanwhile the
daemon is killed with SIGKILL at random moments, at least three times, and
restarted on the same data dir and port. Then a consumer group created
with DELIVER_POLICY_ALL drains the bus and acks. Every acknowledged event
must have been delivered at least once, with the sequence its Publish
returned. Prints: published, acknowledged, delivered, duplicates, lost.

Timeouts only keep a broken daemon from hanging the suite; nothing here
asserts how fast things happen.
"""
import os
import random
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jbtest  # noqa: E402
from jbtest import Daemon, Stubs, event  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402

KILLS = 4
PUBLISHERS = 4
BATCH = 20
CONFIG = "event_bus:\n  batch_window_ms: 5\n  fsync: batch\n"


class Publisher(threading.Thread):
    def __init__(self, address, index, stop):
        super().__init__(daemon=True)
        self.address = address
        self.index = index
        self.stop = stop
        self.sent = 0
        self.acked = {}  # id -> sequence
        self.errors = {}

    def run(self):
        ch = grpc.insecure_channel(self.address, options=jbtest.CHANNEL_OPTIONS)
        stub = Stubs(ch).bus
        n = 0
        while not self.stop.is_set():
            ids = [f"p{self.index}-{n + i}" for i in range(BATCH)]
            n += BATCH
            req = eb.PublishRequest(events=[event("crash.x", i.encode(), id=i) for i in ids])
            self.sent += BATCH
            try:
                r = stub.Publish(req, timeout=5)
            except grpc.RpcError as e:
                self.errors[e.code()] = self.errors.get(e.code(), 0) + 1
                time.sleep(0.02)
                continue
            for i, seq in zip(ids, r.sequences):
                self.acked[i] = seq
        ch.close()


class Crash(unittest.TestCase):
    def test_no_acknowledged_publish_is_lost(self):
        rnd = random.Random(os.environ.get("JB_CRASH_SEED"))
        d = Daemon(CONFIG)
        try:
            ch = d.channel()
            # The consumer group exists from the start and reads everything.
            call = Stubs(ch).bus.Subscribe(eb.SubscribeRequest(
                pattern="crash.>", group="crash", deliver_policy=eb.DELIVER_POLICY_ALL))
            call.initial_metadata()
            call.cancel()
            ch.close()

            stop = threading.Event()
            pubs = [Publisher(d.address, i, stop) for i in range(PUBLISHERS)]
            for p in pubs:
                p.start()
            for _ in range(KILLS):
                # Let the publishers get going (and reconnect) before each kill.
                acked_before = sum(len(p.acked) for p in pubs)
                deadline = time.monotonic() + jbtest.TIMEOUT
                while (sum(len(p.acked) for p in pubs) < acked_before + 200
                       and time.monotonic() < deadline):
                    time.sleep(0.02)
                time.sleep(rnd.uniform(0.05, 0.6))
                d.kill()
                time.sleep(rnd.uniform(0.0, 0.2))
                d.start()
            time.sleep(0.5)
            stop.set()
            for p in pubs:
                p.join(timeout=jbtest.TIMEOUT)

            acked = {}
            for p in pubs:
                acked.update(p.acked)
            published = sum(p.sent for p in pubs)

            ch = d.channel()
            s = Stubs(ch)
            call = s.bus.Subscribe(eb.SubscribeRequest(
                pattern="crash.>", group="crash", deliver_policy=eb.DELIVER_POLICY_ALL,
                max_in_flight=10000), timeout=60)
            delivered = 0
            seen = {}
            missing = set(acked)
            try:
                for batch in call:
                    for e in batch.events:
                        delivered += 1
                        seen[e.id] = e.sequence
                        missing.discard(e.id)
                    s.ack("crash", [e.sequence for e in batch.events])
                    if not missing:
                        break
            except grpc.RpcError as e:
                # A lost event never comes: the deadline ends the wait.
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            call.cancel()
            ch.close()
            rc = d.stop()

            duplicates = delivered - len(seen)
            lost = len(missing)
            wrong = [i for i in acked if i in seen and seen[i] != acked[i]]
            errors = {}
            for p in pubs:
                for code, n in p.errors.items():
                    errors[code.name] = errors.get(code.name, 0) + n
            print(f"published={published} acknowledged={len(acked)} delivered={delivered} "
                  f"duplicates={duplicates} lost={lost} kills={KILLS} publish_errors={errors}",
                  flush=True)
            self.assertEqual(lost, 0)
            self.assertEqual(wrong, [])
            self.assertGreater(len(acked), 0)
            self.assertEqual(rc, 0)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
