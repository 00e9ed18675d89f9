"""jimbot.testing.MockEventBus and jimbot.topics, without any server.

* patterns: docs/event-bus.md's table row by row, plus the validation
  rules and their messages (the C engine's, include/jimbot/topic.h);
* publish records (topic, event) and delivers at once, to handlers (during
  the publish) and to iterator subscriptions;
* consumer groups: every matching group gets each event, members of one
  group share them, private groups get everything, credits cap in-flight
  events, a leaving member gives its events back;
* acks, nacks with delivery attempts, dead letters after max_deliver,
  delayed redelivery, deliver policies, id deduplication.
"""

import unittest

from jimbot import errors, topics
from jimbot.infrastructure.serialization import game_events_pb2 as ge
from jimbot.testing import MockEventBus


def joker(name="Jimbo", game_id="g1"):
    u = ge.GameStateUpdate(game_id=game_id)
    u.joker_purchased.joker_name = name
    return u


class Patterns(unittest.TestCase):
    # docs/event-bus.md, "Topics and patterns": (pattern, matches, does not match)
    TABLE = [
        ("game_events.*", ["game_events.hand_played"], ["game_events", "game_events.a.b"]),
        ("game_events.>", ["game_events.hand_played", "game_events.a.b"], ["game_events"]),
        ("*.b.>", ["a.b.c", "x.b.c.d"], ["a.b", "a.c.d"]),
    ]

    def test_documented_table(self):
        for pattern, yes, no in self.TABLE:
            for topic in yes:
                self.assertTrue(topics.matches(pattern, topic), (pattern, topic))
            for topic in no:
                self.assertFalse(topics.matches(pattern, topic), (pattern, topic))

    def test_more_cases(self):
        cases = [("a", "a", True), ("a", "b", False), ("a", "a.b", False), ("a.b", "a", False),
                 ("*", "a", True), ("*", "a.b", False), (">", "a", True), (">", "a.b.c", True),
                 ("*.*", "a.b", True), ("*.*", "a", False), ("a.*.c", "a.b.c", True),
                 ("a.*.c", "a.b.d", False), ("a.>", "a", False), ("*.>", "a.b", True),
                 ("*.>", "a", False)]
        for pattern, topic, want in cases:
            self.assertEqual(topics.matches(pattern, topic), want, (pattern, topic))

    def test_validation_messages(self):
        bad_topics = {
            "": "empty topic",
            "a..b": "topic 'a..b' has an empty token at byte 2",
            "a.*": "topic 'a.*' contains the wildcard '*' (only patterns may)",
            "a b": "topic 'a b' has an invalid character 0x20 at byte 1",
            "x" * 65: "has a token of 65 bytes (at most 64)",
            ".".join(["t"] * 17): "has 17 tokens (at most 16)",
            "a" * 40 + ("." + "b" * 40) * 6: "is 286 bytes long (at most 255)",
        }
        for topic, why in bad_topics.items():
            with self.assertRaises(errors.InvalidArgumentError, msg=topic) as cm:
                topics.validate_topic(topic)
            self.assertIn(why, str(cm.exception))
        bad_patterns = {
            "a.>.b": "pattern 'a.>.b': '>' must be the last token",
            "game*": "(wildcards must be whole tokens)",
            "a.": "has an empty token at byte 2",
        }
        for pattern, why in bad_patterns.items():
            with self.assertRaises(errors.InvalidArgumentError, msg=pattern) as cm:
                topics.validate_pattern(pattern)
            self.assertIn(why, str(cm.exception))
        for ok in ("a", "a.*.c", ">", "*.b.>", "game_events.hand_played"):
            topics.validate_pattern(ok)


class Mock(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.bus = MockEventBus(source="test")

    async def asyncTearDown(self):
        await self.bus.close()

    async def test_records_and_decodes(self):
        msg = joker()
        seq = await self.bus.publish("game_events.joker_purchased", msg, headers={"k": "v"})
        self.assertEqual(seq, 1)
        [(topic, event)] = self.bus.published_events
        self.assertEqual(topic, "game_events.joker_purchased")
        self.assertEqual(event.message(), msg)
        self.assertEqual((event.type, event.source, event.headers["k"]),
                         ("jimbot.GameStateUpdate", "test", "v"))
        self.assertEqual(self.bus.messages("game_events.*"), [msg])
        self.assertEqual(self.bus.messages("training.>"), [])

    async def test_handlers_run_during_publish(self):
        seen = []

        async def on_event(event):
            seen.append((event.topic, event.message().joker_purchased.joker_name))

        await self.bus.subscribe_handler("game_events.>", on_event, group="analytics")
        await self.bus.publish("game_events.joker_purchased", joker("Blueprint"))
        self.assertEqual(seen, [("game_events.joker_purchased", "Blueprint")])
        await self.bus.publish("training_updates", joker())
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.bus.in_flight("analytics"), [], "a returning handler acks")

    async def test_every_group_gets_each_event_and_members_share(self):
        got = {"a1": [], "a2": [], "b": []}

        def recorder(name):
            async def handler(event):
                got[name].append(event.sequence)
            return handler

        await self.bus.subscribe_handler("game_events.*", recorder("a1"), group="a")
        await self.bus.subscribe_handler("game_events.*", recorder("a2"), group="a")
        await self.bus.subscribe_handler("game_events.>", recorder("b"), group="b")
        seqs = [await self.bus.publish("game_events.x", joker()) for _ in range(10)]
        self.assertEqual(got["b"], seqs)
        self.assertEqual(sorted(got["a1"] + got["a2"]), seqs)
        self.assertEqual(len(got["a1"]), 5, "round-robin by batch")

    async def test_private_subscriptions_each_get_everything(self):
        s1 = self.bus.subscribe("t.*")
        s2 = self.bus.subscribe("t.*")
        self.assertNotEqual(s1.group, s2.group)
        self.assertTrue(s1.group.startswith("_private."))
        await self.bus.publish_many([("t.a", joker()), ("t.b", joker())])
        b1 = await s1.__anext__()
        b2 = await s2.__anext__()
        self.assertEqual(b1.sequences, [1, 2], "one publish_many, one batch")
        self.assertEqual(b2.sequences, [1, 2])
        await s1.close()
        await s2.close()
        with self.assertRaises(errors.NotFoundError):
            self.bus.in_flight(s1.group)

    async def test_credits_ack_and_leave(self):
        sub = self.bus.subscribe("q", "workers", max_in_flight=2)
        for _ in range(5):
            await self.bus.publish("q", joker())
        self.assertEqual(self.bus.in_flight("workers"), [1, 2])
        self.assertEqual(self.bus.pending("workers"), [3, 4, 5])
        b1 = await sub.__anext__()
        self.assertEqual(b1.sequences, [1])
        b2 = await sub.__anext__()
        self.assertEqual(b2.sequences, [2])
        self.assertEqual(await b1.ack(), [])
        self.assertEqual(self.bus.in_flight("workers"), [2, 3])
        self.assertEqual(await self.bus.ack("workers", [1, 99]), [1, 99], "unknown sequences")
        # Leaving gives 2 and 3 back; a new member gets them first.
        await sub.close()
        other = self.bus.subscribe("q", "workers", max_in_flight=10)
        b = await other.__anext__()
        self.assertEqual(b.sequences, [2, 3, 4, 5])
        await other.close()

    async def test_group_pattern_is_fixed(self):
        self.bus.subscribe("a.*", "g")
        with self.assertRaises(errors.InvalidArgumentError):
            self.bus.subscribe("b.*", "g")

    async def test_nack_counts_attempts_then_dead_letters(self):
        bus = MockEventBus(max_deliver=3)
        dlq = bus.subscribe("dlq.>", "dlq-reader")
        sub = bus.subscribe("jobs", "w")
        seq = await bus.publish("jobs", joker(), id="job-1")
        attempts = []
        for _ in range(3):
            [event] = await sub.__anext__()
            attempts.append(event.delivery_attempt)
            await event.nack()
        self.assertEqual(attempts, [1, 2, 3])
        [dead] = await dlq.__anext__()
        self.assertEqual(dead.topic, "dlq.jobs")
        self.assertEqual(dead.message(), joker())
        self.assertEqual({k: v for k, v in dead.headers.items()},
                         {"jimbot-dlq-reason": "max_deliver", "jimbot-dlq-group": "w",
                          "jimbot-dlq-topic": "jobs", "jimbot-dlq-sequence": str(seq),
                          "jimbot-dlq-attempts": "3"})
        self.assertEqual(bus.in_flight("w"), [])
        await bus.close()

    async def test_failing_handler(self):
        async def broken(event):
            raise RuntimeError("boom")

        await self.bus.subscribe_handler("x", broken, group="g")
        with self.assertRaisesRegex(RuntimeError, "boom"):
            await self.bus.publish("x", joker())
        self.assertEqual(self.bus.in_flight("g"), [1], "left in flight for the test to see")

        lenient = MockEventBus(raise_handler_errors=False, max_deliver=2)
        calls = []

        async def flaky(event):
            calls.append(event.delivery_attempt)
            raise RuntimeError("boom")

        await lenient.subscribe_handler("x", flaky, group="g")
        await lenient.publish("x", joker())
        self.assertEqual(calls, [1, 2])
        self.assertEqual([t for t, _ in lenient.published_events], ["x", "dlq.x"])
        await lenient.close()

    async def test_delayed_nack(self):
        sub = self.bus.subscribe("d", "g")
        await self.bus.publish("d", joker())
        [e] = await sub.__anext__()
        await e.nack(delay_ms=30)
        self.assertEqual(self.bus.in_flight("g"), [])
        await self.bus.settle()
        [again] = await sub.__anext__()
        self.assertEqual((again.sequence, again.delivery_attempt), (1, 2))

    async def test_deliver_policies(self):
        for i in range(5):
            await self.bus.publish(f"h.{i}", joker())
        new = self.bus.subscribe("h.*", "new")
        everything = self.bus.subscribe("h.*", "all", deliver_policy="all")
        later = self.bus.subscribe("h.*", "from", deliver_policy="from_sequence",
                                   start_sequence=4)
        self.assertEqual((await everything.__anext__()).sequences, [1, 2, 3, 4, 5])
        self.assertEqual((await later.__anext__()).sequences, [4, 5])
        self.assertEqual(self.bus.pending("new") + self.bus.in_flight("new"), [])
        await self.bus.publish("h.9", joker())
        self.assertEqual((await new.__anext__()).sequences, [6])

    async def test_dedup_by_id(self):
        s1 = await self.bus.publish("d", joker(), id="same")
        s2 = await self.bus.publish("d", joker("Other"), id="same")
        self.assertEqual(s1, s2)
        self.assertEqual(len(self.bus.published_events), 1)

    async def test_all_or_none(self):
        with self.assertRaises(errors.InvalidArgumentError):
            await self.bus.publish_many([("ok", joker()), ("bad topic", joker())])
        self.assertEqual(self.bus.published_events, [])
        with self.assertRaises(errors.InvalidArgumentError):
            await self.bus.publish("big", b"\0" * (1 << 20), type="bytes")

    async def test_auto_ack_iterator(self):
        seen = []
        async with self.bus.subscribe("it", "g", auto_ack=True) as sub:
            for _ in range(3):
                await self.bus.publish("it", joker())
            async for batch in sub:
                seen.extend(batch.sequences)
                if len(seen) == 3:
                    break
        self.assertEqual(seen, [1, 2, 3])
        self.assertEqual(self.bus.in_flight("g"), [], "acked on the next step and at close")

    async def test_closed(self):
        await self.bus.close()
        with self.assertRaises(errors.ClosedError):
            await self.bus.publish("x", joker())


if __name__ == "__main__":
    unittest.main(verbosity=2)
