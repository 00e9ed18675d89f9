"""The request queues from Python (Infrastructure.submit / take) against a
real jimbotd, with workers and submitters in processes of their own
(queue_worker.py, queue_submitter.py: they say on stdout when they are
registered, what they were handed and what they got).

Each test gets build/bin/jimbotd on a free loopback port with a temporary
data dir (jbtest.Daemon) and the configuration of its class:

* round trip: a worker process answers a submitter process, the fields the
  worker sees (delivery_count 1, the submitter's component, the type, the
  time left), a typed answer in this process (response_type), a worker's
  error text (WorkerError), no answer in time (DeadlineExceededError), a
  cancelled submit that never reaches the worker, a worker that re-opens
  its stream after a restart of jimbotd; max_outstanding 2 (two held, the
  third waits), an answer after the worker's close is NotFoundError and
  the next worker gets both with delivery_count 2;
* priority: requests queued while the only worker (max_outstanding 1) is
  busy come out higher priority first, then by arrival;
* no worker: UnavailableError "no-worker" at once, also after the last
  worker went away; a full queue (max_depth 2): BackpressureError
  "queue-full" with a retry hint;
* a worker SIGKILLed mid-request: the request goes to the next worker with
  delivery_count 2 and its submitter gets that answer; poison
  (max_deliveries 2, two workers killed): PoisonedRequestError, counted;
* the cache: a second equal submit is answered cached without reaching the
  worker (the worker's next request is another one); after cache_ttl (1 s)
  it reaches the worker again; it survives a restart of jimbotd (SIGTERM,
  and SIGKILL once the cache file is written), answered with no worker;
* coalescing: equal submits from three processes while the worker holds the
  first: the worker is handed it once, all three get the answer;
* pacing (claude.hourly_limit 3): three pass, a fourth with a short timeout
  is refused at once (RateLimitedError "rate-limited", retry_after_ms past
  its timeout) while a queue with budget none still answers; with
  window_seconds 2 a fourth with a long timeout waits in the queue (the
  worker idle) and is answered when the window frees;
* examples/llm_worker.py: its API key from the configuration (${VAR:-}),
  stub answers, a payload of another type refused with WorkerError, SIGTERM
  exits 0; without a key it exits 2.

Races are closed by waiting for conditions: a process's ready/got lines,
GetResourceStatus's queues[] (workers, depth, coalesced). Timeouts only
keep a broken daemon from hanging the suite; no test asserts a duration.
The cache expiry waits on CLOCK_MONOTONIC, the clock jimbotd's loop runs
on, until cache_ttl has passed since the answer arrived.
"""

import asyncio
import json
import os
import signal
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import jimbot  # noqa: E402
from jimbot import errors  # noqa: E402
from jimbot.infrastructure.serialization.strategy_events_pb2 import (  # noqa: E402
    StrategyRequest, StrategyResponse)

from jbtest import Daemon  # noqa: E402

STEP = 30.0  # seconds any single wait may take before the test fails

BASE = """\
resource_coordinator:
  claude:
    hourly_limit: {limit}
    window_seconds: {window}
    cache_ttl: {ttl}
    api_key: ${{JB_TEST_CLAUDE_KEY:-}}
  queues:
    work: {{budget: none}}
    small: {{budget: none, max_depth: 2}}
    fragile: {{budget: none, max_deliveries: 2}}
    claude: {{budget: claude}}
"""


def config(limit=1000, window=3600, ttl=3600):
    return BASE.format(limit=limit, window=window, ttl=ttl)


class Child:
    """A worker or submitter process; its stdout is JSON lines."""

    def __init__(self, proc):
        self.proc = proc
        self.seen = []

    async def line(self):
        raw = await asyncio.wait_for(self.proc.stdout.readline(), STEP)
        if not raw:
            raise AssertionError(f"child exited ({await self.proc.wait()}) early; saw {self.seen}")
        msg = json.loads(raw)
        self.seen.append(msg)
        return msg

    async def expect(self, event):
        """The next line of @event (lines of other events are skipped)."""
        while True:
            msg = await self.line()
            if msg["event"] == event:
                return msg

    async def tell(self, text):
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


class QueueTestCase(unittest.IsolatedAsyncioTestCase):
    CONFIG = config()

    async def asyncSetUp(self):
        self.daemon = await asyncio.to_thread(Daemon, self.CONFIG)
        self.addr = self.daemon.address
        self.infra = jimbot.Infrastructure(self.addr)
        self.children = []

    async def asyncTearDown(self):
        for c in self.children:
            if c.proc.returncode is None:
                c.proc.kill()
                await c.proc.wait()
        await self.infra.close()
        await asyncio.to_thread(self.daemon.stop)
        self.daemon.close()

    async def spawn(self, script, *args):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, script), self.addr, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        child = Child(proc)
        self.children.append(child)
        return child

    async def worker(self, queue, name, *flags):
        """A worker process, once registered."""
        w = await self.spawn("queue_worker.py", queue, "--name", name, *flags)
        await w.expect("ready")
        return w

    async def submitter(self, queue, question, *flags):
        s = await self.spawn("queue_submitter.py", queue, question, *flags)
        await s.expect("submitting")
        return s

    async def queue(self, name):
        st = await self.infra.status()
        return next(q for q in st.queues if q.name == name)

    async def until(self, cond, what):
        """Waits for the coroutine function @cond to return true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        while True:
            try:
                value = await cond()
            except errors.UnavailableError:
                value = None   # a channel still reconnecting after a restart
            if value:
                return value
            if loop.time() > deadline:
                self.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def until_queue(self, name, what, pred):
        async def check():
            return pred(await self.queue(name))
        await self.until(check, f"{name}: {what}")

    def submit(self, queue, question, **kw):
        """An in-process submit as a task (StrategyResponse decoded by its type)."""
        kw.setdefault("timeout", STEP)
        return asyncio.ensure_future(
            self.infra.submit_detailed(queue, StrategyRequest(question=question), **kw))


class RoundTripTest(QueueTestCase):

    async def test_worker_answers_submitter_process(self):
        w = await self.worker("work", "w1")
        s = await self.submitter("work", "hello", "--component", "advisor", "--priority", "3",
                                 "--timeout", "20")
        got = await w.expect("got")
        self.assertEqual(got["question"], "hello")
        self.assertEqual(got["delivery_count"], 1)
        self.assertEqual(got["submitter"], "advisor")
        self.assertEqual(got["priority"], 3)
        self.assertEqual(got["type"], "jimbot.StrategyRequest")
        self.assertGreater(got["timeout_ms"], 0)
        self.assertLessEqual(got["timeout_ms"], 20000)
        ans = await s.expect("answer")
        self.assertEqual(ans["recommendation"], "w1:hello")
        self.assertFalse(ans["cached"])
        self.assertEqual(ans["request_id"], got["request_id"])
        q = await self.queue("work")
        self.assertEqual((q.workers, q.depth, q.in_flight, q.submitted), (1, 0, 0, 1))

    async def test_typed_answer_in_process(self):
        await self.worker("work", "w1")
        resp = await self.infra.submit_detailed("work", StrategyRequest(question="typed"),
                                                timeout=STEP, response_type=StrategyResponse,
                                                request_id="mine-1")
        self.assertIsInstance(resp.message, StrategyResponse)
        self.assertEqual(resp.message.recommendation, "w1:typed")
        self.assertEqual(resp.request_id, "mine-1")
        self.assertFalse(resp.cached)
        msg = await self.infra.submit("work", StrategyRequest(question="plain"), timeout=STEP)
        self.assertEqual(msg.recommendation, "w1:plain")

    async def test_worker_error_text(self):
        await self.worker("work", "w1", "--fail", "model overloaded")
        with self.assertRaises(errors.WorkerError) as cm:
            await self.infra.submit("work", StrategyRequest(question="q"), timeout=STEP)
        self.assertEqual(cm.exception.text, "model overloaded")
        self.assertTrue(cm.exception.request_id)
        self.assertEqual((await self.queue("work")).cache_entries, 0)   # never cached

    async def test_cancelled_submit_never_reaches_the_worker(self):
        w = await self.worker("work", "w1", "--hold")
        busy = self.submit("work", "busy")
        self.assertEqual((await w.expect("got"))["question"], "busy")
        gone = self.submit("work", "gone")
        await self.until_queue("work", "1 waiting", lambda q: q.depth == 1)
        gone.cancel()
        await self.until_queue("work", "none waiting", lambda q: q.depth == 0)
        after = self.submit("work", "after")
        await self.until_queue("work", "1 waiting", lambda q: q.depth == 1)
        await w.tell("answer")
        self.assertEqual((await w.expect("got"))["question"], "after")
        await w.tell("answer")
        self.assertEqual([(await t).message.recommendation for t in (busy, after)],
                         ["w1:busy", "w1:after"])

    async def test_worker_reconnects_after_a_restart(self):
        requests = await self.infra.take("work", worker="in-process").ready()

        async def serve():
            async for req in requests:
                await req.respond(StrategyResponse(recommendation=f"again:{req.message.question}"))
        server = asyncio.ensure_future(serve())
        try:
            await asyncio.to_thread(self.daemon.stop)
            await asyncio.to_thread(self.daemon.start)
            await self.until_queue("work", "the worker back", lambda q: q.workers == 1)
            msg = await self.infra.submit("work", StrategyRequest(question="q"), timeout=STEP)
            self.assertEqual(msg.recommendation, "again:q")
            self.assertGreaterEqual(requests.reconnects, 1)
        finally:
            await requests.close()
            await asyncio.wait_for(server, STEP)

    async def test_no_answer_in_time(self):
        w = await self.worker("work", "w1", "--hold")
        with self.assertRaises(errors.DeadlineExceededError):
            # Long enough for the hand-out to come first on a loaded machine: the worker holds it.
            await self.infra.submit("work", StrategyRequest(question="slow"), timeout=2.0)
        self.assertEqual((await w.expect("got"))["question"], "slow")


class InProcessWorkerTest(QueueTestCase):

    async def test_max_outstanding_and_answers_after_close(self):
        w = await self.infra.take("work", max_outstanding=2, worker="two").ready()
        tasks = [self.submit("work", f"q{i}") for i in range(3)]
        held = [await asyncio.wait_for(w.__anext__(), STEP) for _ in range(2)]
        await self.until_queue("work", "2 held, 1 waiting",
                               lambda q: (q.in_flight, q.depth) == (2, 1))
        await held[0].respond(StrategyResponse(recommendation="first"))
        third = await asyncio.wait_for(w.__anext__(), STEP)
        self.assertEqual(third.message.question, "q2")
        await w.close()                                  # held[1] and third go back
        await self.until_queue("work", "given back", lambda q: (q.in_flight, q.depth) == (0, 2))
        with self.assertRaises(errors.NotFoundError):
            await third.respond(StrategyResponse(recommendation="too late"))
        w2 = await self.infra.take("work", max_outstanding=2).ready()
        again = [await asyncio.wait_for(w2.__anext__(), STEP) for _ in range(2)]
        self.assertEqual(sorted((r.message.question, r.delivery_count) for r in again),
                         [("q1", 2), ("q2", 2)])
        for r in again:
            await r.respond(StrategyResponse(recommendation=r.message.question))
        self.assertEqual([(await t).message.recommendation for t in tasks], ["first", "q1", "q2"])
        await w2.close()


class PriorityTest(QueueTestCase):

    async def test_higher_priority_first_then_arrival(self):
        w = await self.worker("work", "w1", "--hold", "--max-outstanding", "1")
        first = await self.submitter("work", "busy")
        self.assertEqual((await w.expect("got"))["question"], "busy")
        arrivals = [("low", 0), ("high", 5), ("mid", 1), ("high-2", 5)]
        subs = {}
        for n, (question, prio) in enumerate(arrivals, 1):
            subs[question] = await self.submitter("work", question, "--priority", str(prio))
            await self.until_queue("work", f"{n} waiting", lambda q, n=n: q.depth == n)
        order = []
        for _ in arrivals:
            await w.tell("answer")
            order.append((await w.expect("got"))["question"])
        await w.tell("answer")
        self.assertEqual(order, ["high", "high-2", "mid", "low"])
        self.assertEqual((await first.expect("answer"))["recommendation"], "w1:busy")
        for question, s in subs.items():
            self.assertEqual((await s.expect("answer"))["recommendation"], f"w1:{question}")


class RefusalTest(QueueTestCase):

    async def test_no_worker_at_once(self):
        with self.assertRaises(errors.UnavailableError) as cm:
            await self.infra.submit("work", StrategyRequest(question="anyone?"), timeout=600)
        self.assertEqual(cm.exception.reason, "no-worker")
        w = await self.worker("work", "w1")
        await w.kill()
        await self.until_queue("work", "no worker", lambda q: q.workers == 0)
        s = await self.submitter("work", "still nobody?", "--timeout", "600")
        err = await s.expect("error")
        self.assertEqual((err["class"], err["reason"]), ("UnavailableError", "no-worker"))
        self.assertEqual((await self.queue("work")).depth, 0)

    async def test_full_queue(self):
        w = await self.worker("small", "w1", "--hold")
        busy = self.submit("small", "busy")
        self.assertEqual((await w.expect("got"))["question"], "busy")
        waiting = [self.submit("small", f"wait-{i}") for i in range(2)]
        await self.until_queue("small", "2 waiting", lambda q: q.depth == 2)
        with self.assertRaises(errors.BackpressureError) as cm:
            await self.infra.submit("small", StrategyRequest(question="one more"), timeout=STEP)
        self.assertEqual(cm.exception.reason, "queue-full")
        self.assertGreater(cm.exception.retry_after_ms, 0)
        for _ in range(3):
            await w.tell("answer")
        answers = [(await t).message.recommendation for t in [busy, *waiting]]
        self.assertEqual(answers, ["w1:busy", "w1:wait-0", "w1:wait-1"])


class WorkerLossTest(QueueTestCase):

    async def test_killed_worker_hands_request_to_the_next(self):
        w1 = await self.worker("work", "w1", "--hold")
        s = await self.submitter("work", "fragile job")
        got1 = await w1.expect("got")
        self.assertEqual(got1["delivery_count"], 1)
        w2 = await self.worker("work", "w2")
        await w1.kill()
        got2 = await w2.expect("got")
        self.assertEqual(got2["request_id"], got1["request_id"])
        self.assertEqual(got2["delivery_count"], 2)
        ans = await s.expect("answer")
        self.assertEqual(ans["recommendation"], "w2:fragile job")
        self.assertEqual((await self.queue("work")).poisoned, 0)

    async def test_poison_after_max_deliveries(self):
        w1 = await self.worker("fragile", "w1", "--hold")
        s = await self.submitter("fragile", "crashes everyone")
        self.assertEqual((await w1.expect("got"))["delivery_count"], 1)
        w2 = await self.worker("fragile", "w2", "--hold")
        await w1.kill()
        self.assertEqual((await w2.expect("got"))["delivery_count"], 2)
        await w2.kill()
        err = await s.expect("error")
        self.assertEqual((err["class"], err["reason"]), ("PoisonedRequestError", "poisoned"))
        q = await self.queue("fragile")
        self.assertEqual((q.poisoned, q.depth, q.in_flight), (1, 0, 0))
        # The poisoned request is not handed to a new worker.
        w3 = await self.worker("fragile", "w3")
        msg = await self.infra.submit("fragile", StrategyRequest(question="next"), timeout=STEP)
        self.assertEqual(msg.recommendation, "w3:next")
        self.assertEqual((await w3.expect("got"))["question"], "next")


class CacheTest(QueueTestCase):

    async def test_equal_request_answered_from_cache(self):
        w = await self.worker("work", "w1")
        s1 = await self.submitter("work", "same question")
        a1 = await s1.expect("answer")
        self.assertFalse(a1["cached"])
        self.assertEqual((await w.expect("got"))["question"], "same question")
        s2 = await self.submitter("work", "same question")
        a2 = await s2.expect("answer")
        self.assertTrue(a2["cached"])
        self.assertEqual(a2["recommendation"], "w1:same question")
        self.assertNotEqual(a2["request_id"], a1["request_id"])
        # The worker's next request is a new one: the cached one never reached it.
        await self.infra.submit("work", StrategyRequest(question="marker"), timeout=STEP)
        self.assertEqual((await w.expect("got"))["question"], "marker")
        q = await self.queue("work")
        self.assertEqual((q.cache_hits, q.submitted, q.cache_entries), (1, 3, 2))
        # bypass_cache goes to the worker again.
        r = await self.infra.submit_detailed("work", StrategyRequest(question="same question"),
                                             timeout=STEP, bypass_cache=True)
        self.assertFalse(r.cached)
        self.assertEqual((await w.expect("got"))["question"], "same question")

    async def test_coalescing_of_concurrent_equal_requests(self):
        w = await self.worker("work", "w1", "--hold")
        subs = [await self.submitter("work", "popular")]
        self.assertEqual((await w.expect("got"))["question"], "popular")
        for n in (1, 2):
            subs.append(await self.submitter("work", "popular"))
            await self.until_queue("work", f"{n} coalesced", lambda q, n=n: q.coalesced == n)
        await w.tell("answer")
        answers = [await s.expect("answer") for s in subs]
        self.assertEqual({a["recommendation"] for a in answers}, {"w1:popular"})
        self.assertEqual(len({a["request_id"] for a in answers}), 3)
        self.assertFalse(any(a["cached"] for a in answers))
        marker = self.submit("work", "marker")
        self.assertEqual((await w.expect("got"))["question"], "marker")
        await w.tell("answer")
        await marker


class CacheExpiryTest(QueueTestCase):
    CONFIG = config(ttl=1)

    async def test_expired_entry_reaches_the_worker_again(self):
        w = await self.worker("work", "w1")
        r1 = await self.infra.submit_detailed("work", StrategyRequest(question="e"),
                                              timeout=STEP)
        answered_at = time.monotonic()
        self.assertFalse(r1.cached)
        r2 = await self.infra.submit_detailed("work", StrategyRequest(question="e"),
                                              timeout=STEP)
        self.assertTrue(r2.cached)
        # jimbotd's loop clock is CLOCK_MONOTONIC too: past the TTL by it.
        await asyncio.sleep(max(0.0, answered_at + 1.0 + 0.05 - time.monotonic()))
        r3 = await self.infra.submit_detailed("work", StrategyRequest(question="e"),
                                              timeout=STEP)
        self.assertFalse(r3.cached)
        questions = [(await w.expect("got"))["question"] for _ in range(2)]
        self.assertEqual(questions, ["e", "e"])


class CacheRestartTest(QueueTestCase):

    async def answered_then_restart(self, sig, question):
        w = await self.worker("work", "w1")
        r = await self.infra.submit_detailed("work", StrategyRequest(question=question),
                                             timeout=STEP)
        self.assertFalse(r.cached)
        await w.kill()
        if sig == signal.SIGKILL:
            path = os.path.join(self.daemon.data_dir, "queue.cache")

            async def written():
                return os.path.exists(path)
            await self.until(written, "queue.cache written")
        await asyncio.to_thread(self.daemon.stop, sig)
        await asyncio.to_thread(self.daemon.start)
        await self.until_queue("work", "restarted", lambda q: q.workers == 0)
        # No worker: only the cache can answer.
        r = await self.infra.submit_detailed("work", StrategyRequest(question=question),
                                             timeout=STEP)
        self.assertTrue(r.cached)
        self.assertEqual(r.message.recommendation, f"w1:{question}")
        with self.assertRaises(errors.UnavailableError):
            await self.infra.submit("work", StrategyRequest(question="new"), timeout=STEP)

    async def test_cache_survives_sigterm(self):
        await self.answered_then_restart(signal.SIGTERM, "kept")

    async def test_cache_survives_sigkill_once_written(self):
        await self.answered_then_restart(signal.SIGKILL, "kept too")


class PacingTest(QueueTestCase):
    CONFIG = config(limit=3)

    async def test_fourth_refused_by_its_deadline(self):
        await self.worker("claude", "w1")
        for i in range(3):
            msg = await self.infra.submit("claude", StrategyRequest(question=f"q{i}"),
                                          timeout=STEP)
            self.assertEqual(msg.recommendation, f"w1:q{i}")
        st = await self.infra.status()
        self.assertEqual(st.claude_requests_remaining, 0)
        s = await self.submitter("claude", "q3", "--timeout", "2")
        err = await s.expect("error")
        self.assertEqual((err["class"], err["reason"]), ("RateLimitedError", "rate-limited"))
        self.assertGreater(err["retry_after_ms"], 2000)
        self.assertEqual((await self.queue("claude")).depth, 0)
        # A cached answer spends nothing; a queue with budget none is not paced.
        r = await self.infra.submit_detailed("claude", StrategyRequest(question="q0"),
                                             timeout=STEP)
        self.assertTrue(r.cached)
        await self.worker("work", "w2")
        msg = await self.infra.submit("work", StrategyRequest(question="free"), timeout=STEP)
        self.assertEqual(msg.recommendation, "w2:free")


class PacingWaitTest(QueueTestCase):
    CONFIG = config(limit=3, window=2)

    async def test_fourth_waits_for_the_window(self):
        w = await self.worker("claude", "w1")
        for i in range(3):
            await self.infra.submit("claude", StrategyRequest(question=f"q{i}"), timeout=STEP)
        fourth = self.submit("claude", "q3", timeout=STEP)
        await self.until_queue("claude", "the fourth waiting for budget",
                               lambda q: q.depth == 1 and q.in_flight == 0 and q.workers == 1)
        msg = (await fourth).message
        self.assertEqual(msg.recommendation, "w1:q3")
        questions = [(await w.expect("got"))["question"] for _ in range(4)]
        self.assertEqual(questions, ["q0", "q1", "q2", "q3"])


class ExampleWorkerTest(QueueTestCase):
    EXAMPLE = os.path.join(os.environ.get("JB_SOURCE_DIR", os.path.join(HERE, "..", "..")),
                           "examples", "llm_worker.py")

    async def start(self, env):
        return await asyncio.create_subprocess_exec(
            sys.executable, self.EXAMPLE, "--addr", self.addr, "--queue", "work",
            "-c", self.daemon.config_path, "--env", "it", stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, **env))

    async def test_llm_worker_answers_with_the_stub(self):
        proc = await self.start({"JB_TEST_CLAUDE_KEY": "sk-test"})
        try:
            while True:
                line = await asyncio.wait_for(proc.stderr.readline(), STEP)
                self.assertTrue(line, "llm_worker exited before it was ready")
                if b"ready:" in line:
                    break
            msg = await self.infra.submit("work", StrategyRequest(
                question="which joker?", options=["Jimbo", "Blueprint"]), timeout=STEP)
            self.assertEqual((msg.recommendation, msg.chosen_option, msg.model),
                             ("Jimbo", 0, "stub"))
            with self.assertRaises(errors.WorkerError) as cm:
                await self.infra.submit("work", b"?", type="jimbot.GameStateUpdate",
                                        timeout=STEP)
            self.assertIn("StrategyRequest", cm.exception.text)
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(await asyncio.wait_for(proc.wait(), STEP), 0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def test_llm_worker_without_a_key(self):
        env = {k: v for k, v in os.environ.items() if k != "JIMBOT_CLAUDE_API_KEY"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, self.EXAMPLE, "--addr", self.addr, "-c", self.daemon.config_path,
            "--env", "it", stderr=asyncio.subprocess.PIPE, env=env)
        _, err = await asyncio.wait_for(proc.communicate(), STEP)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"no API key", err)


if __name__ == "__main__":
    unittest.main()
