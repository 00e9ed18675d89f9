"""The bus settings of the configuration, end to end through the real jimbotd.

A configuration with an aggregation rule for jimbot.GameStateUpdate (the
newest state per game_id), a window of its own for game_events.> (none,
while the bus's window is a minute) and a topic allow-list:
* a batch of game states arrives aggregated, at once;
* a publish to a topic outside the list is INVALID_ARGUMENT "unknown topic",
  and so is a subscription whose pattern cannot match an allowed topic;
* the file is then changed while jimbotd runs: the new rule (count) and the
  empty list (every topic) apply to what is published next;
* an invalid rule written next is refused (logged with its line) and the
  rules in force stay.

Timeouts are generous and only keep a broken daemon from hanging the suite;
nothing here asserts how fast things happen.
"""
import os
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from jbtest import TIMEOUT, Collector, Daemon, Stubs, event  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402

STATE = "jimbot.GameStateUpdate"

CONFIG = """event_bus:
  batch_window_ms: 60000
  topics: [game_events]
  aggregation:
    jimbot.GameStateUpdate: {rule: last, key: game_id}
  windows:
    'game_events.>': {batch_window_ms: 0}
"""

RELOADED = """event_bus:
  batch_window_ms: 60000
  topics: []
  aggregation:
    jimbot.GameStateUpdate: {rule: count}
  windows:
    'game_events.>': {batch_window_ms: 0}
    'elsewhere.>': {batch_window_ms: 0}
"""


def state(topic, game):
    return event(topic, type=STATE, headers={"game_id": game})


class BusConfig(unittest.TestCase):
    def setUp(self):
        self.daemon = Daemon(CONFIG, any_topic=False)
        self.channel = self.daemon.channel()
        self.stubs = Stubs(self.channel)

    def tearDown(self):
        self.channel.close()
        self.daemon.close()

    def assert_unknown_topic(self, rpc_error, name):
        self.assertEqual(rpc_error.code(), grpc.StatusCode.INVALID_ARGUMENT, rpc_error.details())
        self.assertIn(f"unknown topic '{name}'", rpc_error.details())

    def test_aggregation_allow_list_and_live_reload(self):
        sub = Collector(self.stubs, "game_events.>", group="agg", ack=True)
        try:
            # One request: g1, g2, g1, g2, g1 and another type.
            games = ["g1", "g2", "g1", "g2", "g1"]
            r = self.stubs.publish(*[state("game_events.state", g) for g in games],
                                   event("game_events.state", type="jimbot.Other"))
            self.assertEqual(list(r.sequences), [1, 2, 3, 4, 5, 6])
            got = sub.wait_count(3)
            # The newest state of each game, and the other event, in one batch.
            self.assertEqual([e.sequence for e in got], [4, 5, 6])
            self.assertEqual(sub.batch_sizes[0], 3)
            self.assertEqual([e.headers["game_id"] for e in got[:2]], ["g2", "g1"])

            with self.assertRaises(grpc.RpcError) as cm:
                self.stubs.publish(event("elsewhere.x"))
            self.assert_unknown_topic(cm.exception, "elsewhere.x")
            call = self.stubs.bus.Subscribe(
                eb.SubscribeRequest(pattern="elsewhere.>", group="other"), timeout=TIMEOUT)
            with self.assertRaises(grpc.RpcError) as cm:
                next(iter(call))
            self.assert_unknown_topic(cm.exception, "elsewhere.>")

            # Changed while running: count instead of last, and every topic.
            with open(self.daemon.config_path, "w") as f:
                f.write(RELOADED)
            line = self.daemon.wait_for("config reloaded")
            self.assertIn("event_bus.aggregation", line)
            self.assertIn("event_bus.topics", line)
            r = self.stubs.publish(*[state("game_events.state", g) for g in ["g1", "g2", "g3"]])
            self.assertEqual(list(r.sequences), [7, 8, 9])
            got = sub.wait_count(4)
            self.assertEqual(len(got), 4)
            summary = got[3]
            self.assertEqual(summary.sequence, 9)
            self.assertEqual(summary.headers["jimbot-aggregate"], "count")
            self.assertEqual(summary.headers["jimbot-count"], "3")
            r = self.stubs.publish(event("elsewhere.x"))
            self.assertEqual(list(r.sequences), [10])

            # An invalid rule is refused with its place, and the rules in force stay.
            with open(self.daemon.config_path, "w") as f:
                f.write(RELOADED.replace("{rule: count}", "{rule: first}"))
            self.daemon.wait_for("config reload failed")
            line = self.daemon.wait_for("config error")
            self.assertIn("event_bus.aggregation.jimbot.GameStateUpdate.rule", line)
            self.assertIn(":5:", line)
            r = self.stubs.publish(*[state("game_events.state", g) for g in ["g1", "g1"]])
            self.assertEqual(list(r.sequences), [11, 12])
            got = sub.wait_count(5)
            self.assertEqual(len(got), 5)
            self.assertEqual(got[4].sequence, 12)
            self.assertEqual(got[4].headers["jimbot-count"], "2")
        finally:
            sub.cancel()


if __name__ == "__main__":
    unittest.main(verbosity=2, argv=[sys.argv[0]])
