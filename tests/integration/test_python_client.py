"""jimbot.EventBus, the asyncio Python client, against a real jimbotd.

Each test gets build/bin/jimbotd on a free loopback port with a temporary
data dir (jbtest.Daemon): publish/subscribe round trips with every
GameStateUpdate variant and message() decoding, raw payloads, errors mapped
to jimbot.errors, batching that coalesces concurrent publishes, acks, nacks,
shared groups, auto-ack, reconnection after a daemon restart, and
backpressure for real: a daemon configured with a small
event_bus.max_group_pending and a group that holds unacked events refuses
publishes with RESOURCE_EXHAUSTED and a retry-after-ms hint; the client
retries until the holder acks, or raises BackpressureError when it never does.

Timeouts only keep a broken client from hanging the suite; nothing here
asserts how fast things happen.
"""

import asyncio
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jimbot  # noqa: E402
from jimbot import errors  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as pb  # noqa: E402
from jimbot.infrastructure.serialization import game_events_pb2 as ge  # noqa: E402

from jbtest import Daemon  # noqa: E402

STEP = 10.0  # seconds any single wait may take before the test fails


def joker(game_id="g1"):
    u = ge.GameStateUpdate(game_id=game_id, ante=1, money=4, game_sequence=1)
    u.joker_purchased.joker_name = "Jimbo"
    u.joker_purchased.cost = 2
    u.joker_purchased.synergies.extend(["Blueprint"])
    return u


def hand(game_id="g1"):
    u = ge.GameStateUpdate(game_id=game_id, ante=1, game_sequence=2)
    u.hand_played.hand_type = ge.HAND_TYPE_FLUSH
    u.hand_played.chips = 35.0
    u.hand_played.mult = 4.0
    u.hand_played.score = 140.0
    return u


def round_done(game_id="g1"):
    u = ge.GameStateUpdate(game_id=game_id, ante=1, game_sequence=3)
    u.round_completed.SetInParent()
    return u


async def collect(sub, n, *, ack=True):
    """The next ``n`` events of ``sub`` (acking each batch unless told not to)."""
    out = []
    while len(out) < n:
        batch = await asyncio.wait_for(sub.__anext__(), STEP)
        out.extend(batch)
        if ack:
            await batch.ack()
    return out


class DaemonTestCase(unittest.IsolatedAsyncioTestCase):
    """A jimbotd of its own for each test, configured with CONFIG."""

    CONFIG = ""

    async def asyncSetUp(self):
        # Starting and stopping block: keep them off the event loop.
        self.daemon = await asyncio.to_thread(Daemon, self.CONFIG)
        self.addr = self.daemon.address
        self.bus = jimbot.EventBus(self.addr, source="it")

    async def asyncTearDown(self):
        await self.bus.close()
        await asyncio.to_thread(self.daemon.stop)
        self.daemon.close()

    async def stop_daemon(self):
        await asyncio.to_thread(self.daemon.stop)

    async def start_daemon(self):
        """Starts it again on the same port and data dir."""
        await asyncio.to_thread(self.daemon.start)


class ClientTest(DaemonTestCase):

    async def test_round_trip_every_variant(self):
        sub = await self.bus.subscribe("game_events.>", "it-round-trip").ready()
        sent = {"game_events.joker_purchased": joker(), "game_events.hand_played": hand(),
                "game_events.round_completed": round_done()}
        seqs = []
        for topic, msg in sent.items():
            seqs.append(await self.bus.publish(topic, msg, headers={"game_id": "g1"}))
        self.assertEqual(seqs, sorted(seqs))
        events = await collect(sub, 3)
        self.assertEqual([e.sequence for e in events], seqs)
        for e in events:
            self.assertEqual(e.type, "jimbot.GameStateUpdate")
            self.assertEqual(e.source, "it")
            self.assertEqual(e.headers["game_id"], "g1")
            self.assertEqual(e.delivery_attempt, 1)
            self.assertGreater(e.timestamp_ms, 0)
            self.assertEqual(e.message(), sent[e.topic])
        self.assertEqual([e.message().WhichOneof("update") for e in events],
                         ["joker_purchased", "hand_played", "round_completed"])
        # Acked: acking again finds nothing in flight.
        self.assertEqual(await self.bus.ack("it-round-trip", seqs), seqs)
        await sub.close()

    async def test_raw_payload_needs_a_type(self):
        with self.assertRaises(TypeError):
            await self.bus.publish("game_events.raw", b"\x01\x02")
        sub = await self.bus.subscribe("game_events.raw", "it-raw").ready()
        payload = ge.JokerPurchased(joker_name="Joker", cost=3).SerializeToString()
        seq = await self.bus.publish("game_events.raw", payload, type="jimbot.JokerPurchased",
                                     id="raw-1")
        [event] = await collect(sub, 1)
        self.assertEqual(event.sequence, seq)
        self.assertEqual(event.payload, payload)
        self.assertEqual(event.id, "raw-1")
        self.assertEqual(event.message(), ge.JokerPurchased(joker_name="Joker", cost=3))
        await sub.close()

    async def test_unknown_type_is_reported_on_decode(self):
        sub = await self.bus.subscribe("x.y", "it-unknown").ready()
        await self.bus.publish("x.y", b"zz", type="no.such.Type")
        [event] = await collect(sub, 1)
        with self.assertRaises(errors.UnknownTypeError):
            event.message()
        await sub.close()

    async def test_errors_are_typed(self):
        with self.assertRaises(errors.InvalidArgumentError):   # refused by the client
            await self.bus.publish("game_events..x", joker())
        with self.assertRaises(errors.InvalidArgumentError):
            self.bus.subscribe("game*")
        bad = pb.Event(topic="a..b", type="t", payload=b"x")    # refused by the server
        with self.assertRaises(errors.InvalidArgumentError) as cm:
            await self.bus.publish_many([bad])
        self.assertEqual(cm.exception.code.name, "INVALID_ARGUMENT")
        too_big = b"\0" * (1 << 20)                             # over max_event_bytes
        with self.assertRaises(errors.InvalidArgumentError):
            await self.bus.publish("game_events.big", too_big, type="bytes")

    async def test_publish_many_is_one_request(self):
        sub = await self.bus.subscribe("game_events.*", "it-many").ready()
        before = self.bus.stats["publish_requests"]
        seqs = await self.bus.publish_many([("game_events.a", joker()), ("game_events.b", hand()),
                                            jimbot.make_event("game_events.c", round_done(),
                                                              id="many-3")])
        self.assertEqual(self.bus.stats["publish_requests"] - before, 1)
        # One request is stored whole: consecutive sequences.
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + 3)))
        events = await collect(sub, 3)
        self.assertEqual([e.topic for e in events], ["game_events.a", "game_events.b",
                                                     "game_events.c"])
        await sub.close()

    async def test_batch_window_coalesces_concurrent_publishes(self):
        n = 200
        sub = await self.bus.subscribe("game_events.>", "it-window").ready()
        async with jimbot.EventBus(self.addr, batch_window_ms=100) as batching:
            seqs = await asyncio.wait_for(
                asyncio.gather(*(batching.publish(f"game_events.n{i}", joker(f"g{i}"))
                                 for i in range(n))), STEP)
            requests = batching.stats["publish_requests"]
        self.assertEqual(len(set(seqs)), n)
        self.assertEqual(seqs, sorted(seqs), "one client's publishes keep their order")
        self.assertLessEqual(requests, 2, "200 concurrent publishes in one or two requests")
        events = await collect(sub, n)
        self.assertEqual({e.sequence: e.message().game_id for e in events},
                         {s: f"g{i}" for i, s in enumerate(seqs)})
        await sub.close()

    async def test_batch_window_isolates_a_bad_event(self):
        async with jimbot.EventBus(self.addr, batch_window_ms=50) as batching:
            results = await asyncio.gather(
                batching.publish("game_events.ok1", joker()),
                batching.publish("game_events.big", b"\0" * (1 << 20), type="bytes"),
                batching.publish("game_events.ok2", hand()), return_exceptions=True)
        self.assertIsInstance(results[0], int)
        self.assertIsInstance(results[1], errors.InvalidArgumentError)
        self.assertIsInstance(results[2], int)
        self.assertLess(results[0], results[2])

    async def test_nack_redelivers_with_attempt_count(self):
        sub = await self.bus.subscribe("game_events.nack", "it-nack").ready()
        seq = await self.bus.publish("game_events.nack", joker())
        [first] = await collect(sub, 1, ack=False)
        self.assertEqual((first.sequence, first.delivery_attempt), (seq, 1))
        await first.nack(delay_ms=10)
        [again] = await collect(sub, 1, ack=False)
        self.assertEqual((again.sequence, again.delivery_attempt), (seq, 2))
        await again.ack()
        await sub.close()

    async def test_group_members_share_events(self):
        a = await self.bus.subscribe("game_events.shared", "it-shared").ready()
        b = await self.bus.subscribe("game_events.shared", "it-shared").ready()
        solo = await self.bus.subscribe("game_events.shared").ready()   # private group
        seqs = [await self.bus.publish("game_events.shared", joker(f"g{i}")) for i in range(20)]
        got = {"a": [], "b": []}

        async def drain(name, sub):
            async for batch in sub:
                got[name].extend(batch.sequences)
                await batch.ack()

        tasks = [asyncio.create_task(drain("a", a)), asyncio.create_task(drain("b", b))]
        everything = await collect(solo, 20)
        self.assertTrue(solo.group, "the private group's name came in the metadata")
        self.assertEqual([e.sequence for e in everything], seqs)
        deadline = time.monotonic() + STEP
        while len(got["a"]) + len(got["b"]) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.assertEqual(sorted(got["a"] + got["b"]), seqs)
        self.assertFalse(set(got["a"]) & set(got["b"]), "each event to one member")
        for t in tasks:
            t.cancel()
        for s in (a, b, solo):
            await s.close()

    async def test_auto_ack_acks_after_the_loop_body(self):
        sub = await self.bus.subscribe("game_events.auto", "it-auto", auto_ack=True).ready()
        s1 = await self.bus.publish("game_events.auto", joker())
        [e1] = await collect(sub, 1, ack=False)
        self.assertEqual(e1.sequence, s1)
        s2 = await self.bus.publish("game_events.auto", hand())
        [e2] = await collect(sub, 1, ack=False)       # asking for it acked e1
        self.assertEqual(e2.sequence, s2)
        self.assertEqual(await self.bus.ack("it-auto", [s1]), [s1])
        await sub.close()                             # acks e2
        self.assertEqual(await self.bus.ack("it-auto", [s2]), [s2])

    async def test_subscribe_handler(self):
        seen = []
        done = asyncio.Event()

        async def on_event(event):
            seen.append(event.message().game_id)
            if len(seen) == 3:
                done.set()

        h = await self.bus.subscribe_handler("game_events.h", on_event, group="it-handler")
        for i in range(3):
            await self.bus.publish("game_events.h", joker(f"g{i}"))
        await asyncio.wait_for(done.wait(), STEP)
        self.assertEqual(seen, ["g0", "g1", "g2"])
        await h.close()

    async def test_reconnects_after_server_restart(self):
        sub = await self.bus.subscribe("game_events.>", "it-restart").ready()
        s1 = await self.bus.publish("game_events.before", joker())
        [e1] = await collect(sub, 1)
        self.assertEqual(e1.sequence, s1)

        await self.stop_daemon()
        await asyncio.sleep(0.5)
        await self.start_daemon()
        # With an id the publish is retried through the outage safely.
        s2 = await self.bus.publish("game_events.after", hand(), id="after-restart")
        [e2] = await collect(sub, 1)
        self.assertEqual((e2.sequence, e2.topic), (s2, "game_events.after"))
        self.assertGreaterEqual(sub.reconnects, 1)
        await sub.close()

    async def test_unavailable_without_id_is_raised(self):
        await self.stop_daemon()
        with self.assertRaises(errors.UnavailableError):
            await self.bus.publish("game_events.down", joker())

    async def test_health_and_close(self):
        self.assertEqual(await self.bus.health(), "SERVING")
        await self.bus.close()
        with self.assertRaises(errors.ClosedError):
            await self.bus.publish("game_events.closed", joker())


class BackpressureTest(DaemonTestCase):
    """RESOURCE_EXHAUSTED from the daemon itself: a group on bp.> that holds
    HELD unacked events fills event_bus.max_group_pending, so a publish to
    bp.x is refused until it acks. The holder's ack_wait_ms of 100 is the
    hint the daemon gives (min(ack wait, 1000 ms)); its max_deliver keeps
    the held events from being dead-lettered (which would make room)."""

    HELD = 2
    CONFIG = f"event_bus:\n  batch_window_ms: 0\n  max_group_pending: {HELD}\n"

    async def fill(self):
        """The holder's subscription and the sequences it holds unacked."""
        holder = await self.bus.subscribe("bp.>", "bp-holder", ack_wait_ms=100,
                                          max_deliver=1000).ready()
        seqs = [await self.bus.publish("bp.x", joker(f"held{i}")) for i in range(self.HELD)]
        held = await collect(holder, self.HELD, ack=False)
        self.assertEqual([e.sequence for e in held], seqs)
        return holder, seqs

    async def test_retries_until_the_group_makes_room(self):
        holder, held = await self.fill()
        publish = asyncio.create_task(self.bus.publish("bp.x", joker("late")))
        deadline = time.monotonic() + STEP
        while self.bus.stats["backpressure_retries"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.assertGreaterEqual(self.bus.stats["backpressure_retries"], 1, "never refused")
        # The group is still full, so the publish cannot have gone through.
        self.assertFalse(publish.done())
        self.assertEqual(await self.bus.ack("bp-holder", held), [])
        seq = await asyncio.wait_for(publish, STEP)
        self.assertGreater(seq, held[-1])
        # Every attempt went out as a request: the refused ones and the one stored.
        self.assertEqual(self.bus.stats["publish_requests"],
                         self.HELD + self.bus.stats["backpressure_retries"] + 1)
        await holder.close()

    async def test_never_acked_raises_backpressure_error(self):
        holder, _ = await self.fill()
        async with jimbot.EventBus(self.addr, publish_timeout_s=1.0) as short:
            with self.assertRaises(errors.BackpressureError) as cm:
                await short.publish("bp.x", joker())
            retries = short.stats["backpressure_retries"]
        self.assertEqual(cm.exception.retry_after_ms, 100)
        self.assertIn("lack of room", str(cm.exception))
        self.assertIn("group 'bp-holder'", str(cm.exception))
        self.assertGreaterEqual(retries, 1, "retried on the hint before giving up")
        # A topic the full group does not match still goes through.
        self.assertGreater(await self.bus.publish("other.x", joker()), 0)
        await holder.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
