"""Consumer groups at scale and their life cycle, against the real jimbotd.

* A restart with 5,000 saved groups and a backlog of 9,000 events becomes
  ready (Health SERVING) and stays responsive while 20 of those groups
  catch up, with a bounded peak RSS (VmHWM); SIGTERM while 200 catch up
  exits 0. Before, such a restart never answered: every group read the log
  on the loop at once, each holding its own copy of every event.
* ListGroups / DeleteGroup through jimbotctl: the table, deleting an unused
  group, refusing to delete one with members (FAILED_PRECONDITION).
* event_bus.max_groups: one group too many is RESOURCE_EXHAUSTED.

Prints the figures (time to ready, VmHWM). Timeouts only keep a broken
daemon from hanging the suite; nothing asserts how fast things happen.
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
from jbtest import Collector, Daemon, Stubs, event  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402
from jimbot.infra.v1 import health_pb2  # noqa: E402

GROUPS = 5000
EVENTS = 9000
CATCHING_UP = 20
RSS_BOUND_KB = 256 * 1024
JIMBOTCTL = os.path.join(jbtest.BIN, "jimbotctl")
SERVING = health_pb2.HealthCheckResponse.SERVING


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def wait_serving(stubs, deadline):
    """Polls Health.Check until SERVING; returns when it answered so."""
    while time.monotonic() < deadline:
        try:
            r = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if r.status == SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    raise AssertionError("jimbotd never answered SERVING")


def add_saved_groups(state_path, n):
    """Appends @n named groups at floor 1 (the whole backlog pending) to groups.state."""
    with open(state_path) as f:
        text = f.read()
    assert text.startswith("jimbot-bus-groups 2\n") and text.endswith("end\n"), text[:200]
    lines = [f"group g{i} game_events.> 30000 5 1 0 0 0\nacked\nattempts\n" for i in range(n)]
    with open(state_path + ".new", "w") as f:
        f.write(text[:-len("end\n")] + "".join(lines) + "end\n")
    os.replace(state_path + ".new", state_path)


def wait_counted(stubs, name):
    """Waits for the backlog pass to count group @name's pending events."""
    deadline = time.monotonic() + jbtest.TIMEOUT
    while time.monotonic() < deadline:
        groups = stubs.bus.ListGroups(eb.ListGroupsRequest(), timeout=jbtest.TIMEOUT).groups
        if next(g for g in groups if g.name == name).pending == EVENTS:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}: the backlog was never counted")


def ctl(daemon, *args):
    return subprocess.run([JIMBOTCTL, "--addr", daemon.address, *args], capture_output=True,
                          text=True, timeout=jbtest.TIMEOUT)


class GroupsAtScale(unittest.TestCase):
    def setUp(self):
        self.d = Daemon("event_bus:\n  batch_window_ms: 20\n")

    def tearDown(self):
        self.d.close()

    def fill(self):
        """One real group, the backlog, then 5,000 more saved groups behind a clean stop."""
        with self.d.channel() as ch:
            s = Stubs(ch)
            Collector(s, "game_events.>", group="real").cancel()
            for i in range(0, EVENTS, 500):
                s.publish(*[event("game_events.hand", b"p" * 16) for _ in range(500)])
        self.assertEqual(self.d.stop(), 0)
        add_saved_groups(os.path.join(self.d.data_dir, "groups.state"), GROUPS)

    def test_restart_with_5000_groups_and_a_backlog(self):
        self.fill()
        t0 = time.monotonic()
        self.d.start()
        with self.d.channel() as ch:
            s = Stubs(ch)
            wait_serving(s, t0 + jbtest.TIMEOUT)
            ready_s = time.monotonic() - t0
            listed = s.bus.ListGroups(eb.ListGroupsRequest(), timeout=jbtest.TIMEOUT).groups
            self.assertEqual(len(listed), GROUPS + 1)
            g42 = next(g for g in listed if g.name == "g42")
            self.assertEqual((g42.lag, g42.ack_floor, g42.members), (EVENTS, 1, 0))

            # 100 groups catch up on the whole backlog while health keeps answering.
            subs = [Collector(s, "game_events.>", group=f"g{i}", ack=True)
                    for i in range(CATCHING_UP)]
            health_answers = 0
            for c in subs:
                wait_serving(s, time.monotonic() + jbtest.TIMEOUT)
                health_answers += 1
                got = c.wait_count(EVENTS, timeout=60)
                self.assertEqual(len(got), EVENTS, f"{c.group}: {c.error}")
            hwm = vm_hwm_kb(self.d.proc.pid)
            for c in subs:
                c.cancel()
        print(f"restart with {GROUPS + 1} groups and {EVENTS} events: SERVING after "
              f"{ready_s:.2f} s; {CATCHING_UP} groups caught up ({health_answers} health "
              f"answers meanwhile); VmHWM {hwm} KiB", flush=True)
        self.assertLess(hwm, RSS_BOUND_KB)
        self.assertEqual(self.d.stop(), 0)

    def test_sigterm_while_groups_catch_up(self):
        self.fill()
        self.d.start()
        with self.d.channel() as ch:
            s = Stubs(ch)
            wait_serving(s, time.monotonic() + jbtest.TIMEOUT)
            subs = [Collector(s, "game_events.>", group=f"g{i}") for i in range(200)]
            subs[0].wait_count(1)
            self.assertEqual(self.d.stop(signal.SIGTERM), 0)
            # Every stream is ended by the drain, none left hanging or cancelled.
            for c in subs:
                e = c.wait_error()
                self.assertIsNotNone(e, "a stream outlived the daemon")
                self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())

    def test_jimbotctl_groups_and_delete(self):
        self.fill()
        self.d.start()
        with self.d.channel() as ch:
            s = Stubs(ch)
            wait_serving(s, time.monotonic() + jbtest.TIMEOUT)
            wait_counted(s, "g4999")
            out = ctl(self.d, "groups")
            self.assertEqual(out.returncode, 0, out.stderr)
            rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
            self.assertEqual(len(rows), GROUPS + 1)
            # NAME PATTERN MEMBERS PENDING LAG ACK_FLOOR: the backlog is counted, unread.
            self.assertEqual(rows["g7"][1:6],
                             ["game_events.>", "0", str(EVENTS), str(EVENTS), "1"])

            member = Collector(s, "game_events.>", group="g8")
            busy = ctl(self.d, "group", "delete", "g8")
            self.assertEqual(busy.returncode, 1)
            self.assertIn("member", busy.stderr)
            member.cancel()

            done = ctl(self.d, "group", "delete", "g7")
            self.assertEqual(done.returncode, 0, done.stderr)
            missing = ctl(self.d, "group", "delete", "g7")
            self.assertEqual(missing.returncode, 1)
            self.assertIn("unknown group", missing.stderr)
            names = {g.name for g in s.bus.ListGroups(eb.ListGroupsRequest()).groups}
            self.assertNotIn("g7", names)
            self.assertIn("g8", names)
        self.assertEqual(self.d.stop(), 0)
        with open(os.path.join(self.d.data_dir, "groups.state")) as f:
            self.assertNotIn("group g7 ", f.read())


class GroupCap(unittest.TestCase):
    def test_one_group_too_many_is_resource_exhausted(self):
        d = Daemon("event_bus:\n  max_groups: 2\n")
        try:
            with d.channel() as ch:
                s = Stubs(ch)
                a = Collector(s, "a", group="one")
                b = Collector(s, "a", group="two")
                with self.assertRaises(grpc.RpcError) as e:
                    next(s.bus.Subscribe(eb.SubscribeRequest(pattern="a", group="three"),
                                         timeout=jbtest.TIMEOUT))
                self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertIn("event_bus.max_groups", e.exception.details())
                again = Collector(s, "a", group="one")  # joining an existing group is fine
                for c in (a, b, again):
                    c.cancel()
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
