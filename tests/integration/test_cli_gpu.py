"""jimbotctl gpu/quota/status and the C client's Infrastructure calls against the real jimbotd.

The daemon (jbtest.Daemon) has one GPU from the configuration (NVML pointed at a library that
does not exist, so that the test means the same on a machine with GPUs), keepalives every 200 ms
and an hourly budget of 5. Covered: `gpu acquire -- sh -c 'echo $CUDA_VISIBLE_DEVICES'` prints 0
and the device is free afterwards; a second acquire waits (its position printed) while the first
holds, and runs once it exits; the command's exit status passes through; `quota --take 1`
decreases what remains; `status --json` parses with the expected fields; `gpu release` of an
unknown id fails with one line; the C client's blocking acquire/release, quota and status; and,
each on a daemon of its own, a lease that expires under a running command (exit 124, with the
warning) and a lease kept across a daemon restart and re-attached by jimbotctl.

Timeouts only keep a broken build from hanging the suite; nothing here asserts durations.
"""
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jbtest import TIMEOUT, Daemon  # noqa: E402
from test_cli_gpu_fake import JIMBOTCTL, PROBE, Proc  # noqa: E402



def config(gpu_extra=""):
    return ("resource_coordinator:\n"
            "  max_waiters: 16\n"
            "  gpu:\n"
            "    devices: \"1\"\n"
            "    keepalive_ms: 200\n"
            "    nvml_library: /nonexistent/libnvidia-ml.so.1\n"
            + "".join(f"    {line}\n" for line in gpu_extra.splitlines()) +
            "  claude:\n"
            "    hourly_limit: 5\n")


def ctl(addr, *args):
    env = dict(os.environ)
    env.pop("JIMBOT_COMPONENT", None)
    return subprocess.run([JIMBOTCTL, "--addr", addr, *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def status(addr):
    r = ctl(addr, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def gpu_free(addr):
    return status(addr)["gpus"][0].get("available", False)


def wait_for(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class CliGpuTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(config())
        cls.addr = cls.daemon.address

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        cls.daemon.close()
        assert rc == 0, rc

    def start(self, *args, addr=None):
        p = Proc([JIMBOTCTL, "--addr", addr or self.addr, *args])
        self.addCleanup(p.close)
        return p

    def test_acquire_sets_the_device_and_releases(self):
        r = ctl(self.addr, "gpu", "acquire", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
        self.assertEqual((r.returncode, r.stdout), (0, "0\n"), r.stderr)
        self.assertTrue(wait_for(lambda: gpu_free(self.addr)), status(self.addr))
        r = ctl(self.addr, "gpu", "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(free)", r.stdout)

    def test_second_waits_while_the_first_holds(self):
        first = self.start("gpu", "acquire", "--", "sh", "-c", "echo first; read x")
        first.expect(first.out, "first")
        r = ctl(self.addr, "gpu", "status")
        self.assertIn("jimbotctl", r.stdout)
        second = self.start("gpu", "acquire", "--", "echo", "second")
        second.expect(second.err, "waiting for a GPU: position 1")
        self.assertIsNone(second.proc.poll())
        self.assertEqual(second.out_lines, [])
        self.assertEqual(len(status(self.addr).get("gpuWaiters", [])), 1)
        first.proc.stdin.write("\n")
        first.proc.stdin.flush()
        self.assertEqual(first.finish(), 0, first.err_lines)
        self.assertEqual(second.finish(), 0, second.err_lines)
        self.assertEqual(second.out_lines, ["second"])
        self.assertTrue(wait_for(lambda: gpu_free(self.addr)))

    def test_exit_status_passes_through(self):
        r = ctl(self.addr, "gpu", "acquire", "--", "sh", "-c", "exit 7")
        self.assertEqual(r.returncode, 7, r.stderr)
        self.assertTrue(wait_for(lambda: gpu_free(self.addr)))

    def test_quota_take_decreases_remaining(self):
        r = ctl(self.addr, "quota", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        before = json.loads(r.stdout)["remaining"]
        self.assertGreater(before, 0)
        r = ctl(self.addr, "quota", "--take", "1", "--component", "strategy")
        self.assertEqual((r.returncode, r.stdout),
                         (0, f"granted 1, remaining {before - 1} of 5\n"), r.stderr)
        self.assertEqual(status(self.addr).get("claudeRequestsRemaining", 0), before - 1)
        r = ctl(self.addr, "quota", "--take", "6")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)

    def test_status_json_fields(self):
        doc = status(self.addr)
        self.assertEqual(len(doc["gpus"]), 1)
        self.assertEqual(doc["gpuSource"], "config")
        self.assertEqual(doc["claudeHourlyLimit"], 5)
        self.assertIn("claudeWindowSeconds", doc)
        r = ctl(self.addr, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("GPUs (1, from config)\n"), r.stdout)

    def test_release_unknown_lease_fails(self):
        r = ctl(self.addr, "gpu", "release", "no-such-lease")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertTrue(r.stderr.startswith("jimbotctl: gpu release: ReleaseGpu: NOT_FOUND"),
                        r.stderr)

    def test_c_client(self):
        def probe(*args):
            r = subprocess.run([PROBE, self.addr, *map(str, args)], capture_output=True,
                               text=True, timeout=TIMEOUT)
            return r.returncode, r.stdout.splitlines()

        rc, out = probe("gpu", "training", 60)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out[0], r"^granted \S+ 0 reattached 0$")
        self.assertEqual(out[1:], ["released device 0", "ended OK"])
        rc, out = probe("gpu-async", "inference")
        self.assertEqual(rc, 0, out)
        # The release's callback and the end come in either order.
        self.assertEqual(sorted(out[1:]), ["ended OK", "release-cb OK "])
        rc, out = probe("rstatus")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out[0], r"^gpus 1 free 1 waiters 0 remaining \d+ limit 5$")
        remaining = int(out[0].split()[7])
        rc, out = probe("quota", "analytics", 1, 0)
        self.assertEqual((rc, out),
                         (0, [f"quota granted 1 remaining {remaining - 1} retry 0 limit 5"]))
        rc, out = probe("gpu-release", "no-such-lease")
        self.assertEqual(rc, 1)
        self.assertTrue(out[0].startswith("error: ENOENT: ReleaseGpu: NOT_FOUND"), out)


class CliGpuLifecycleTests(unittest.TestCase):
    """Each with a daemon of its own: an expiry, and a restart in the middle of a lease."""

    def daemon(self, gpu_extra=""):
        d = Daemon(config(gpu_extra))
        self.addCleanup(d.close)
        return d

    def test_expiry_stops_the_command(self):
        d = self.daemon("max_allocation_seconds: 2\nexpiry_warning_seconds: 1")
        r = ctl(d.address, "gpu", "acquire", "--",
                "sh", "-c", "trap 'echo stopped; exit 0' TERM; while :; do sleep 0.1; done")
        self.assertEqual(r.returncode, 124, r.stderr)
        self.assertIn("stopped", r.stdout)
        lines = r.stderr.splitlines()
        self.assertTrue(any("warning: the GPU lease" in line for line in lines), lines)
        self.assertIn("expired; COMMAND was stopped", lines[-1])
        self.assertTrue(wait_for(lambda: gpu_free(d.address)))
        self.assertEqual(d.stop(), 0)

    def test_lease_survives_a_restart(self):
        d = self.daemon()
        p = Proc([JIMBOTCTL, "--addr", d.address, "gpu", "acquire", "--",
                  "sh", "-c", "echo started; read x; echo $JIMBOT_GPU_LEASE"])
        self.addCleanup(p.close)
        p.expect(p.out, "started")
        lease = status(d.address)["gpus"][0]["leaseId"]
        self.assertEqual(d.stop(), 0)
        p.expect(p.err, "re-attaching to lease")
        d.start()
        p.expect(p.err, f"re-attached to lease {lease}")
        p.proc.stdin.write("\n")
        p.proc.stdin.flush()
        self.assertEqual(p.finish(), 0, p.err_lines)
        self.assertEqual(p.out_lines, ["started", lease])
        self.assertTrue(wait_for(lambda: gpu_free(d.address)))
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
