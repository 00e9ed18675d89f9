"""jimbotctl queue submit/take/status and the C client's request queue against the real jimbotd.

One daemon (jbtest.Daemon) has a queue per test, with `budget: none` but for `paced`, tied to an
hourly budget of 1; `small` has max_depth 2 and `poison` max_deliveries 1. Covered through
jimbotctl: a submit answered by `queue take --echo` (the payload back as base64, and as proto3
JSON for a known type; --json-out with request_id and cached; the repeat answered from the
cache), `--reply-json` and `--reply-payload` answers, a worker's error text (exit 1), no worker
(exit 4 with the reason), an unknown queue (exit 1), usage errors (exit 2), and `status`/`queue
status` showing the queue. Through the C probe (queue_probe): a callback worker answering from
its callback, the cached flag, an asynchronous submit, a pull worker's error text, the refusals
(no-worker, unknown queue, a worker of an unknown queue), a full queue (queue-full with a retry
hint), a request that times out, the budget's rate-limited refusal, a poisoned request, the
argument checks (a blocking call refused in a callback) and a client freed with its worker open
(ENDED with JB_ECLOSED).

Workers are waited for by their "registered" line or by GetResourceStatus, never by sleeping.
Timeouts only keep a broken build from hanging the suite; nothing here asserts durations.
"""
import base64
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jbtest import TIMEOUT, Daemon  # noqa: E402
from test_cli_gpu import ctl  # noqa: E402
from test_cli_gpu_fake import BUILD, JIMBOTCTL, Proc  # noqa: E402

PROBE = os.path.join(BUILD, "tests", "queue_probe")

# Each test has queues of its own, so that a worker another test left (killed, and not yet
# noticed by the daemon) cannot take its requests.
PLAIN = ["rt", "reply", "err", "noworker", "status", "c_echo", "c_fail", "c_refusals",
         "c_timeout", "c_args"]
CONFIG = ("resource_coordinator:\n"
          "  claude:\n"
          "    hourly_limit: 1\n"
          "  queues:\n"
          + "".join(f"    {q}: {{budget: none}}\n" for q in PLAIN) +
          "    small: {budget: none, max_depth: 2}\n"
          "    paced: {budget: claude}\n"
          "    poison: {budget: none, max_deliveries: 1}\n")

KNOWN_TYPE = "jimbot.infra.v1.QueueStatus"


def probe(addr, *args):
    r = subprocess.run([PROBE, addr, *[str(a) for a in args]], capture_output=True, text=True,
                       timeout=TIMEOUT)
    return r.returncode, r.stdout.splitlines()


class CliQueueTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(CONFIG)
        cls.addr = cls.daemon.address

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        cls.daemon.close()
        assert rc == 0, rc

    def worker(self, queue, *reply, count=None):
        """A `queue take` worker, returned once it says it is registered."""
        args = [JIMBOTCTL, "--addr", self.addr, "queue", "take", queue, *reply]
        if count is not None:
            args += ["--count", str(count)]
        p = Proc(args)
        self.addCleanup(p.close)
        p.expect(p.err, "registered as a worker of queue " + queue)
        return p

    def queue_status(self, name):
        r = ctl(self.addr, "queue", "status", name, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)[0]

    def test_round_trip_through_jimbotctl(self):
        w = self.worker("rt", "--echo", count=3)
        r = ctl(self.addr, "queue", "submit", "rt", "--payload", "hello", "--no-cache")
        self.assertEqual((r.returncode, r.stdout), (0, base64.b64encode(b"hello").decode() + "\n"),
                         r.stderr)
        task = json.loads(w.out.get(timeout=TIMEOUT))
        self.assertEqual((task["queue"], task["submitter"], task["delivery_count"],
                          task["payload_base64"]), ("rt", "jimbotctl", 1, "aGVsbG8="))

        r = ctl(self.addr, "queue", "submit", "rt", "--type", KNOWN_TYPE, "--json",
                '{"name": "x", "depth": 3}', "--priority", "2", "--submitter", "tester")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {"name": "x", "depth": 3})
        task = json.loads(w.out.get(timeout=TIMEOUT))
        self.assertEqual((task["type"], task["priority"], task["submitter"], task["payload"]),
                         (KNOWN_TYPE, 2, "tester", {"name": "x", "depth": 3}))

        r = ctl(self.addr, "queue", "submit", "rt", "--payload", "json-out", "--id", "my-id",
                "--json-out")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {"request_id": "my-id", "type": "",
                                                "cached": False, "payload_base64": "anNvbi1vdXQ="})
        self.assertEqual(w.proc.wait(timeout=TIMEOUT), 0)

        # The worker is gone; the same request is answered from the cache.
        r = ctl(self.addr, "queue", "submit", "rt", "--payload", "json-out", "--json-out")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout)["cached"])

    def test_take_replies_with_json_or_bytes(self):
        self.worker("reply", "--reply-json", '{"name": "answer"}', "--type", KNOWN_TYPE, count=1)
        r = ctl(self.addr, "queue", "submit", "reply", "--payload", "q1", "--no-cache")
        self.assertEqual((r.returncode, json.loads(r.stdout)), (0, {"name": "answer"}), r.stderr)
        self.worker("reply", "--reply-payload", "plain words", count=1)
        r = ctl(self.addr, "queue", "submit", "reply", "--payload", "q2", "--no-cache",
                "--json-out")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(base64.b64decode(json.loads(r.stdout)["payload_base64"]), b"plain words")

    def test_worker_error_exits_1(self):
        self.worker("err", "--fail", "model overloaded", count=1)
        r = ctl(self.addr, "queue", "submit", "err", "--payload", "e", "--no-cache")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.strip(),
                         "jimbotctl: queue submit: the worker could not answer: model overloaded")

    def test_no_worker_exits_4(self):
        r = ctl(self.addr, "queue", "submit", "noworker", "--payload", "nobody", "--no-cache")
        self.assertEqual(r.returncode, 4)
        self.assertEqual(len(r.stderr.splitlines()), 1)
        self.assertIn("UNAVAILABLE: no worker", r.stderr)

    def test_unknown_queue_exits_1(self):
        for args in (["submit", "nope", "--payload", "x"], ["take", "nope", "--echo"]):
            r = ctl(self.addr, "queue", *args)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn("NOT_FOUND: no queue 'nope'", r.stderr)
            self.assertEqual(len(r.stderr.splitlines()), 1)

    def test_usage_errors_exit_2(self):
        for args in (["submit"], ["submit", "q", "--json", "{}"], ["take", "q"],
                     ["take", "q", "--echo", "--fail", "x"], ["submit", "q", "--timeout-ms", "x"],
                     ["frobnicate"]):
            r = ctl(self.addr, "queue", *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertEqual(len(r.stderr.splitlines()), 1, args)

    def test_help(self):
        r = ctl(self.addr, "queue", "--help")
        self.assertEqual(r.returncode, 0)
        for word in ("queue submit", "queue take", "queue status", "--no-cache", "--echo"):
            self.assertIn(word, r.stdout)
        self.assertIn("queue submit", ctl(self.addr, "--help").stdout)

    def test_status_shows_the_queues(self):
        self.worker("status", "--echo")
        self.assertEqual(self.queue_status("status")["workers"], 1)
        r = ctl(self.addr, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
        self.assertEqual(rows["small"][1:3], ["none", "0/2"])
        self.assertEqual(rows["paced"][1], "claude")
        self.assertEqual(rows["status"][4], "1")
        r = ctl(self.addr, "status", "--json")
        names = [q["name"] for q in json.loads(r.stdout)["queues"]]
        self.assertEqual(sorted(names), sorted(PLAIN + ["paced", "poison", "small"]))
        self.assertEqual(ctl(self.addr, "queue", "status", "nope").returncode, 1)

    # ---- the C client (queue_probe) ----

    def test_c_echo_cached_async(self):
        rc, out = probe(self.addr, "echo", "c_echo", 2)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out, ["response p0 type echo cached 0 delivery 1",
                               "response p1 type echo cached 0 delivery 1",
                               "response p0 type echo cached 1 delivery 1",
                               "async a1"])

    def test_c_worker_error_text(self):
        rc, out = probe(self.addr, "fail", "c_fail", "no luck")
        self.assertEqual((rc, out), (0, ["status OK error no luck cached 0"]))

    def test_c_refusals(self):
        rc, out = probe(self.addr, "refusals", "c_refusals")
        self.assertEqual((rc, out), (0, ["submit EUNAVAILABLE reason no-worker",
                                         "unknown ENOENT", "worker ENOENT"]))

    def test_c_full_queue(self):
        rc, out = probe(self.addr, "full", "small", 2)
        self.assertEqual((rc, out), (0, ["full EBACKPRESSURE reason queue-full retry-positive 1",
                                         "answered 3"]))

    def test_c_timeout(self):
        rc, out = probe(self.addr, "timeout", "c_timeout")
        self.assertEqual((rc, out), (0, ["timeout ETIMEDOUT"]))

    def test_c_rate_limited(self):
        rc, out = probe(self.addr, "paced", "paced")
        self.assertEqual((rc, out), (0, ["first OK",
                                         "second ERATELIMITED reason rate-limited "
                                         "retry-positive 1"]))

    def test_c_poisoned(self):
        rc, out = probe(self.addr, "poison", "poison")
        self.assertEqual((rc, out), (0, ["poison EIO reason poisoned"]))

    def test_c_argument_checks_and_teardown(self):
        rc, out = probe(self.addr, "args", "c_args")
        self.assertEqual(rc, 0, out)
        # "in-callback" comes from the client thread, in any order with the main thread's lines.
        self.assertEqual(sorted(out[:7]), sorted([
            "no-queue EINVAL", "no-callback EINVAL", "respond-no-id EINVAL",
            "respond-unknown ENOENT", "worker-no-queue EINVAL", "in-callback EINVAL",
            "next-with-callback EINVAL"]))
        self.assertEqual(out[7:], ["ended ECLOSED"])


if __name__ == "__main__":
    unittest.main()
