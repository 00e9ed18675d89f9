"""jimbotctl gpu/quota/status and the C client's Infrastructure calls, against a scripted service.

The service is fake_infra.FakeInfra, in this process: it follows the contract closely enough to
test what the clients do (what they send, how they wait, run, re-attach, stop a command, map
errors) with the awkward cases on demand: a lease that expires after two seconds, a daemon that
shuts down in the middle of a lease and keeps it for a re-attach. The same scenarios against the
real coordinator are in test_cli_gpu.py.

Timeouts only keep a broken build from hanging the suite; nothing here asserts durations.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_infra import FakeInfra  # noqa: E402

SOURCE = os.environ.get("JB_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("JB_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(BUILD, "bin"))
JIMBOTCTL = os.path.join(BIN, "jimbotctl")
PROBE = os.path.join(BUILD, "tests", "client_probe")
TIMEOUT = 30.0


class Proc:
    """A process whose stdout and stderr lines arrive in queues, for reading with a timeout."""

    def __init__(self, argv, **kw):
        env = dict(os.environ)
        env.pop("JIMBOT_COMPONENT", None)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, **kw)
        self.out, self.err = queue.Queue(), queue.Queue()
        self.out_lines, self.err_lines = [], []
        for stream, q, keep in ((self.proc.stdout, self.out, self.out_lines),
                                (self.proc.stderr, self.err, self.err_lines)):
            threading.Thread(target=self._pump, args=(stream, q, keep), daemon=True).start()

    @staticmethod
    def _pump(stream, q, keep):
        for line in stream:
            keep.append(line.rstrip("\n"))
            q.put(line.rstrip("\n"))
        q.put(None)

    def expect(self, q, needle):
        while True:
            line = q.get(timeout=TIMEOUT)
            if line is None:
                raise AssertionError(f"ended before '{needle}': {self.err_lines}")
            if needle in line:
                return line

    def finish(self):
        rc = self.proc.wait(timeout=TIMEOUT)
        for q in (self.out, self.err):
            while q.get(timeout=TIMEOUT) is not None:
                pass
        return rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


class FakeTests(unittest.TestCase):
    def setUp(self):
        self.fake = FakeInfra()
        self.addCleanup(self.fake.close)

    def ctl(self, *args):
        env = dict(os.environ)
        env.pop("JIMBOT_COMPONENT", None)
        return subprocess.run([JIMBOTCTL, "--addr", self.fake.address, *args], capture_output=True,
                              text=True, timeout=TIMEOUT, env=env)

    def start(self, *args):
        p = Proc([JIMBOTCTL, "--addr", self.fake.address, *args])
        self.addCleanup(p.close)
        return p

    def probe(self, *args):
        r = subprocess.run([PROBE, self.fake.address, *map(str, args)], capture_output=True,
                           text=True, timeout=TIMEOUT)
        return r.returncode, r.stdout.splitlines()

    def test_command_gets_the_device_and_the_lease_is_released(self):
        r = self.ctl("gpu", "acquire", "--",
                     "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES $JIMBOT_GPU_LEASE $$"')
        self.assertEqual(r.returncode, 0, r.stderr)
        device, lease, pid = r.stdout.split()
        self.assertEqual(device, "0")
        req = self.fake.requests[0]
        # The default component, the command as reason, and the pid of the command itself.
        self.assertEqual((req.component, req.pid), ("jimbotctl", int(pid)))
        self.assertTrue(req.reason.startswith("sh -c"), req.reason)
        self.assertIsNone(self.fake.lease)
        self.assertEqual(r.stderr, "")

    def test_options_reach_the_request(self):
        r = self.ctl("gpu", "acquire", "--component", "training", "--priority", "-3",
                     "--seconds", "60", "--reason", "nightly", "--", "true")
        self.assertEqual(r.returncode, 0, r.stderr)
        req = self.fake.requests[0]
        self.assertEqual((req.component, req.priority, req.duration_seconds, req.reason),
                         ("training", -3, 60, "nightly"))

    def test_component_from_the_environment(self):
        env = dict(os.environ, JIMBOT_COMPONENT="analytics")
        r = subprocess.run([JIMBOTCTL, "--addr", self.fake.address, "gpu", "acquire", "--", "true"],
                           capture_output=True, text=True, timeout=TIMEOUT, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.fake.requests[0].component, "analytics")

    def test_exit_status_passes_through(self):
        self.assertEqual(self.ctl("gpu", "acquire", "--", "sh", "-c", "exit 7").returncode, 7)
        r = self.ctl("gpu", "acquire", "--", "/nonexistent/command")
        self.assertEqual(r.returncode, 127)
        self.assertIn("cannot run '/nonexistent/command'", r.stderr)
        self.assertIsNone(self.fake.lease)

    def test_second_waits_for_the_first(self):
        first = self.start("gpu", "acquire", "--", "sh", "-c", "echo first; read x")
        first.expect(first.out, "first")
        second = self.start("gpu", "acquire", "--", "echo", "second")
        second.expect(second.err, "waiting for a GPU: position 1")
        self.assertIsNone(second.proc.poll())
        self.assertEqual(second.out_lines, [])
        first.proc.stdin.write("\n")
        first.proc.stdin.flush()
        self.assertEqual(first.finish(), 0)
        self.assertEqual(second.finish(), 0)
        self.assertEqual(second.out_lines, ["second"])
        self.assertIsNone(self.fake.lease)

    def test_expiry_warns_then_stops_the_command(self):
        r = self.ctl("gpu", "acquire", "--seconds", "2", "--",
                     "sh", "-c", "trap 'echo stopped; exit 0' TERM; while :; do sleep 0.1; done")
        self.assertEqual(r.returncode, 124, r.stderr)
        self.assertIn("stopped", r.stdout)
        lines = r.stderr.splitlines()
        self.assertTrue(any("warning: the GPU lease" in line for line in lines), lines)
        self.assertIn("expired; COMMAND was stopped", lines[-1])

    def test_reattach_after_a_daemon_shutdown(self):
        p = self.start("gpu", "acquire", "--", "sh", "-c", "echo started; read x")
        p.expect(p.out, "started")
        lease = self.fake.lease["id"]
        self.fake.break_streams()
        self.fake.wait_until(lambda f: any(r.lease_id == lease for r in f.requests)
                             and f.lease is not None and f.lease["attached"])
        p.expect(p.err, f"re-attached to lease {lease}")
        p.proc.stdin.write("\n")
        p.proc.stdin.flush()
        self.assertEqual(p.finish(), 0, p.err_lines)
        self.assertIsNone(self.fake.lease)

    def test_signals_are_passed_on(self):
        p = self.start("gpu", "acquire", "--", "sh", "-c",
                       "trap 'echo got-term; exit 3' TERM; echo started; "
                       "while :; do sleep 0.1; done")
        p.expect(p.out, "started")
        p.proc.send_signal(signal.SIGTERM)
        self.assertEqual(p.finish(), 3)
        self.assertIn("got-term", p.out_lines)
        self.assertIsNone(self.fake.lease)

    def test_interrupted_while_waiting(self):
        self.fake.hold()
        p = self.start("gpu", "acquire", "--", "echo", "never")
        p.expect(p.err, "waiting for a GPU: position 1")
        p.proc.send_signal(signal.SIGINT)
        self.assertEqual(p.finish(), 130)
        self.assertEqual(p.out_lines, [])
        self.fake.wait_until(lambda f: not f.waiters)

    def test_timeout_while_waiting(self):
        self.fake.hold()
        r = self.ctl("gpu", "acquire", "--timeout", "1", "--", "echo", "never")
        self.assertEqual(r.returncode, 4)
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr.splitlines()[-1],
                         "jimbotctl: gpu acquire: no GPU within 1 s (position 1)")

    def test_release_by_id_stops_the_holder(self):
        p = self.start("gpu", "acquire", "--", "sh", "-c",
                       "echo started; while :; do sleep 0.1; done")
        p.expect(p.out, "started")
        lease = self.fake.lease["id"]
        r = self.ctl("gpu", "release", lease)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(f"released {lease} (device 0, held "), r.stdout)
        self.assertEqual(p.finish(), 1)
        self.assertIn("was released elsewhere", p.err_lines[-1])

    def test_release_unknown_fails_with_one_line(self):
        r = self.ctl("gpu", "release", "no-such-lease")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.splitlines()), 1)
        self.assertIn("NOT_FOUND", r.stderr)

    def test_usage_errors(self):
        for args in (["gpu", "acquire"], ["gpu", "acquire", "--seconds", "x", "--", "true"],
                     ["gpu"], ["gpu", "release"], ["quota", "--take", "0"]):
            r = self.ctl(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertEqual(self.fake.requests, [])

    def test_status_tables_and_json(self):
        self.fake.hold("training")
        r = self.ctl("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("training", r.stdout)
        self.assertIn("LLM API budget", r.stdout)
        r = self.ctl("gpu", "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[1].split()[:3], ["0", "-", "training"])
        r = self.ctl("status", "--json")
        doc = json.loads(r.stdout)
        self.assertEqual(doc["gpus"][0]["holder"], "training")
        self.assertEqual(doc["claudeHourlyLimit"], 5)

    def test_quota(self):
        r = self.ctl("quota", "--take", "2")
        self.assertEqual((r.returncode, r.stdout), (0, "granted 2, remaining 3 of 5\n"), r.stderr)
        r = self.ctl("quota")
        self.assertIn("remaining       3", r.stdout)
        r = self.ctl("quota", "--take", "4", "--json")
        self.assertEqual(r.returncode, 4)
        self.assertEqual(json.loads(r.stdout)["granted"], False)
        self.assertEqual(r.stderr,
                         "jimbotctl: quota: not granted: retry after 1234 ms (3 of 5 left)\n")
        r = self.ctl("quota", "--take", "9")
        self.assertEqual(r.returncode, 1)
        self.assertIn("INVALID_ARGUMENT", r.stderr)

    def test_c_client_blocking_async_and_by_id(self):
        rc, out = self.probe("gpu", "training", 60)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out[0], r"^granted \S+ 0 reattached 0$")
        self.assertEqual(out[1:], ["released device 0", "ended OK"])
        self.assertEqual(self.fake.requests[0].duration_seconds, 60)
        self.assertIsNone(self.fake.lease)

        rc, out = self.probe("gpu-async", "inference")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out[0], r"^granted \S+ 0$")
        # The release's callback and the end come in either order.
        self.assertEqual(sorted(out[1:]), ["ended OK", "release-cb OK "])

        holder = subprocess.Popen([PROBE, self.fake.address, "gpu-hold", "training", "60"],
                                  stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdout.close)
        first = holder.stdout.readline().split()
        self.assertEqual(first[0], "granted")
        rc, out = self.probe("gpu-release", first[1])
        self.assertEqual((rc, out), (0, ["released device 0"]))
        self.assertEqual(holder.wait(timeout=TIMEOUT), 0)
        self.assertEqual(holder.stdout.read().splitlines(), ["ended OK ", "again OK"])

        rc, out = self.probe("gpu-release", "nope")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("error: ENOENT: ReleaseGpu: NOT_FOUND"), out)

    def test_c_client_expiry_and_refusal(self):
        rc, out = self.probe("gpu-hold", "training", 2)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out[1], "expiring")
        self.assertEqual(out[2], "ended ELEASE_EXPIRED AcquireGpu: DEADLINE_EXCEEDED: lease expired")
        self.assertEqual(out[3], "again ELEASE_EXPIRED")
        rc, out = self.probe("gpu", "", 0)
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("error: EINVAL: AcquireGpu: no component"), out)

    def test_c_client_quota_and_status(self):
        rc, out = self.probe("quota", "strategy", 1, 0)
        self.assertEqual((rc, out), (0, ["quota granted 1 remaining 4 retry 0 limit 5"]))
        rc, out = self.probe("quota", "strategy", 5, 0)
        self.assertEqual((rc, out), (0, ["quota granted 0 remaining 4 retry 1234 limit 5"]))
        # A wait longer than the client's deadline: the call's deadline is wait_ms + deadline_ms,
        # so the answer ("not granted" after the wait) arrives instead of DEADLINE_EXCEEDED.
        rc, out = self.probe("quota", "strategy", 5, 1500, 300)
        self.assertEqual((rc, out), (0, ["quota granted 0 remaining 4 retry 1234 limit 5"]))
        lease = self.fake.hold("training")
        rc, out = self.probe("rstatus")
        self.assertEqual((rc, out), (0, ["gpus 1 free 0 waiters 0 remaining 4 limit 5",
                                         f"gpu 0 training {lease}"]))


if __name__ == "__main__":
    unittest.main()
