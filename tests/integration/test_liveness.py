"""Client liveness: gRPC keepalive in the C client, jimbotctl subscribe and
the Python client, against the real jimbotd.

A server that vanishes without closing its connections is frozen here with
SIGSTOP: the kernel keeps the TCP connection open, so only an unanswered
keepalive ping can tell the client. Each client subscribes with a 1 s
keepalive and a 1 s ping timeout; the test waits (a 20 s deadline, where without keepalive the
stream would hang forever) for the client to report that its stream broke
and that it subscribes again, then SIGCONT lets the daemon go on and the
subscription delivers again. An idle subscriber pinging every second for
six seconds (with a long ping timeout, so that a loaded machine's late
answer is not taken for a dead server) is not sent GOAWAY "too_many_pings":
its stream never breaks.

Timeouts only keep a broken build from hanging the suite; nothing here
asserts how fast things happen.
"""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jbtest import TIMEOUT, Daemon, Stubs, event  # noqa: E402
from jimbot.infra.v1 import infrastructure_pb2 as infra  # noqa: E402

SOURCE = os.environ.get("JB_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("JB_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(BUILD, "bin"))
JIMBOTCTL = os.path.join(BIN, "jimbotctl")
PROBE = os.path.join(BUILD, "tests", "client_probe")
# Long enough that only keepalive can end the wait; a stream that nothing
# watches would wait forever.
NOTICE_DEADLINE = 20.0
KEEPALIVE_MS = 1000
# A frozen server must be noticed quickly; an idle client on a loaded
# machine must not give up a live server whose answer is late.
FROZEN_TIMEOUT_MS = 1000
IDLE_TIMEOUT_MS = 20000
IDLE_MS = 6000

# A Python subscriber (jimbot.event_bus) in a child process: "subscribed",
# "events N" per batch, "reconnects N" when it subscribes again, and with
# IDLE_MS > 0 "idle reconnects N" once that long has passed after the first
# batch.
PY_SUBSCRIBER = """
import asyncio, sys
from jimbot.event_bus import EventBus

async def main(addr, pattern, group, keepalive_ms, timeout_ms, idle_ms):
    bus = EventBus(addr, keepalive_ms=keepalive_ms, keepalive_timeout_ms=timeout_ms,
                   reconnect_initial_s=0.05, reconnect_max_s=0.5)
    sub = await bus.subscribe(pattern, group, deliver_policy="all", auto_ack=True).ready()
    print("subscribed", flush=True)
    first = asyncio.Event()

    async def watch():
        seen = 0
        while True:
            if sub.reconnects != seen:
                seen = sub.reconnects
                print("reconnects", seen, flush=True)
            await asyncio.sleep(0.1)

    async def read():
        async for batch in sub:
            print("events", len(batch), flush=True)
            first.set()

    tasks = [asyncio.ensure_future(watch()), asyncio.ensure_future(read())]
    if idle_ms > 0:
        await first.wait()
        await asyncio.sleep(idle_ms / 1000)
        print("idle reconnects", sub.reconnects, flush=True)
    else:
        await asyncio.gather(*tasks)
    for t in tasks:
        t.cancel()
    await bus.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])))
"""


class Lines:
    """A child process whose stdout and stderr lines arrive in one queue."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.q = queue.Queue()
        self.seen = []
        self.pumps = [threading.Thread(target=self._pump, args=(f,), daemon=True)
                      for f in (self.proc.stdout, self.proc.stderr)]
        for p in self.pumps:
            p.start()

    def _pump(self, f):
        for line in f:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def until(self, want, timeout=TIMEOUT):
        """The first line (from now) containing @want; fails after @timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with '{want}' in {timeout:g}s:\n"
                                     + "\n".join(self.seen[-20:]))
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                if self.proc.poll() is not None and all(not p.is_alive() for p in self.pumps):
                    raise AssertionError(f"process ended ({self.proc.poll()}) before '{want}':\n"
                                         + "\n".join(self.seen[-20:]))
                continue
            self.seen.append(line)
            if want in line:
                return line

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for p in self.pumps:
            p.join(timeout=TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


def c_subscriber(d, group, idle_ms=0):
    timeout = IDLE_TIMEOUT_MS if idle_ms else FROZEN_TIMEOUT_MS
    return Lines([PROBE, d.address, "sub-watch", "lv.>", group, str(KEEPALIVE_MS), str(timeout),
                  str(idle_ms)])


def py_subscriber(d, group, idle_ms=0):
    timeout = IDLE_TIMEOUT_MS if idle_ms else FROZEN_TIMEOUT_MS
    return Lines([sys.executable, "-c", PY_SUBSCRIBER, d.address, "lv.>", group,
                  str(KEEPALIVE_MS), str(timeout), str(idle_ms)])


def ctl_subscriber(d, group):
    return Lines([JIMBOTCTL, "--addr", d.address, "subscribe", "lv.>", "--group", group,
                  "--from", "all", "--keepalive", str(KEEPALIVE_MS)])


class FrozenServer(unittest.TestCase):
    def setUp(self):
        self.d = Daemon("event_bus:\n  batch_window_ms: 0\n")
        self.ch = self.d.channel()
        self.s = Stubs(self.ch)

    def tearDown(self):
        if self.d.proc is not None:
            os.kill(self.d.proc.pid, signal.SIGCONT)
        self.ch.close()
        self.d.close()

    def wait_acked(self, group):
        """Until @group has nothing unacked (no ack is in flight to freeze)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            r = self.s.infra.GetResourceStatus(infra.GetResourceStatusRequest(), timeout=TIMEOUT)
            if r.queue_depths.get(group, 1) == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"group {group} never acked")

    def run_frozen(self, sub, group, ready, first, broke, second):
        """Lines the client prints: @ready once subscribed (None: nothing),
        @first for the event published before the freeze, @broke when the
        stream broke and is subscribed again, @second for one after SIGCONT."""
        try:
            if ready is not None:
                sub.until(ready)
            self.s.publish(event("lv.x", b"before"))
            sub.until(first)  # the stream is up
            self.wait_acked(group)
            os.kill(self.d.proc.pid, signal.SIGSTOP)
            try:
                sub.until(broke, timeout=NOTICE_DEADLINE)
            finally:
                os.kill(self.d.proc.pid, signal.SIGCONT)
            # Back to normal: the subscription delivers again.
            self.s.publish(event("lv.x", b"after"))
            sub.until(second)
        finally:
            sub.close()
        self.assertEqual(self.d.stop(), 0)

    def test_c_client_notices_a_frozen_server(self):
        self.run_frozen(c_subscriber(self.d, "lv-c"), "lv-c", "subscribed", "events", "reconnects",
                        "events")

    def test_jimbotctl_subscribe_notices_a_frozen_server(self):
        # Events print as JSON lines, the payloads in base64: "before" is
        # YmVmb3Jl, "after" YWZ0ZXI=.
        self.run_frozen(ctl_subscriber(self.d, "lv-ctl"), "lv-ctl", None, "YmVmb3Jl", "subscribing again",
                        "YWZ0ZXI=")

    def test_python_client_notices_a_frozen_server(self):
        self.run_frozen(py_subscriber(self.d, "lv-py"), "lv-py", "subscribed", "events", "reconnects",
                        "events")


class IdleKeepalive(unittest.TestCase):
    """Pings every second on a quiet stream for six seconds: jimbotd allows
    them, so the stream is never broken by GOAWAY "too_many_pings"."""

    def setUp(self):
        self.d = Daemon("event_bus:\n  batch_window_ms: 0\n")
        self.ch = self.d.channel()
        self.s = Stubs(self.ch)

    def tearDown(self):
        self.ch.close()
        self.d.close()

    def run_idle(self, sub):
        try:
            sub.until("subscribed")
            self.s.publish(event("lv.x", b"once"))
            sub.until("events")
            line = sub.until("idle reconnects", timeout=TIMEOUT + IDLE_MS / 1000)
            self.assertEqual(line, "idle reconnects 0")
            self.assertFalse([x for x in sub.seen if "too_many_pings" in x])
        finally:
            sub.close()
        self.assertFalse([x for x in self.d.log if "too_many_pings" in x])
        self.assertEqual(self.d.stop(), 0)

    def test_c_client(self):
        self.run_idle(c_subscriber(self.d, "idle-c", IDLE_MS))

    def test_python_client(self):
        self.run_idle(py_subscriber(self.d, "idle-py", IDLE_MS))


if __name__ == "__main__":
    unittest.main(verbosity=2)
