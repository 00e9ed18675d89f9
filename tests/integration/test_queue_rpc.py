"""The request queue of a real jimbotd over raw gRPC (SubmitRequest, TakeRequests, Respond): the
wire contract of docs/grpc.md and docs/coordinator.md "The request queue", its status codes and
"jimbot-error" trailers, what a worker is handed, cancellation, give-back, poison, pacing by the
budget, the queue's status, and the drain. The Python client's own tests of the same features
(several processes) are test_python_queue.py.

Run with /usr/bin/python3 (Debian's grpcio); PYTHONPATH must hold build/python.
"""
import queue
import signal
import threading
import time
import unittest

import grpc

import jbtest
from jimbot.infra.v1 import infrastructure_pb2 as pb

TIMEOUT = jbtest.TIMEOUT
CONFIG = """
resource_coordinator:
  gpu:
    devices: 1
    nvml_library: ''
  claude:
    hourly_limit: 1
  queues:
    echo: {budget: none, max_depth: 1, timeout_ms: 30000}
    once: {budget: none, max_deliveries: 1}
    twice: {budget: none, max_deliveries: 2}
    claude: {}
"""


def trailer(err, key):
    for k, v in err.trailing_metadata() or ():
        if k == key:
            return v
    return None


class Worker:
    """One TakeRequests stream read on a thread; registered once constructed."""

    def __init__(self, stubs, queue_name, max_outstanding=1, name="w"):
        self.tasks = queue.Queue()
        self.code = None
        self.call = stubs.infra.TakeRequests(pb.TakeRequestsRequest(
            queue=queue_name, max_outstanding=max_outstanding, worker=name))
        # The daemon sends initial metadata, marked, once the worker is registered.
        md = dict(self.call.initial_metadata())
        assert md.get("jimbot-worker") == (name or queue_name), md
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for t in self.call:
                self.tasks.put(t)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code = e.code()
        self.tasks.put(None)

    def next(self, timeout=TIMEOUT):
        t = self.tasks.get(timeout=timeout)
        if t is None:
            raise AssertionError(f"worker stream ended {self.code}")
        return t

    def cancel(self):
        self.call.cancel()
        self.thread.join(timeout=TIMEOUT)


class QueueRpcTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = jbtest.Daemon(CONFIG)
        cls.ch = cls.d.channel()
        cls.s = jbtest.Stubs(cls.ch)

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        cls.d.close()

    def setUp(self):
        self.workers = []

    def tearDown(self):
        for w in self.workers:
            w.cancel()
        # Every test leaves its queues empty for the next one.
        self.wait_queue("echo", lambda q: q.workers == 0 and q.depth == 0 and q.in_flight == 0)

    def worker(self, queue_name, **kw):
        w = Worker(self.s, queue_name, **kw)
        self.workers.append(w)
        return w

    def submit_async(self, queue_name, payload=b"p", timeout=TIMEOUT, **kw):
        kw.setdefault("type", "t.Req")
        return self.s.infra.SubmitRequest.future(
            pb.QueuedRequest(queue=queue_name, payload=payload, **kw),
            timeout=timeout)

    def status(self, name):
        st = self.s.infra.GetResourceStatus(pb.GetResourceStatusRequest(), timeout=TIMEOUT)
        return next(q for q in st.queues if q.name == name)

    def wait_queue(self, name, cond):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            q = self.status(name)
            if cond(q):
                return q
            time.sleep(0.02)
        raise AssertionError(f"queue {name} never met the condition: {self.status(name)}")

    def respond(self, task, payload=b"answer", error=""):
        self.s.infra.Respond(pb.QueuedResponse(request_id=task.request_id, type="t.Resp",
                                               payload=payload, error=error), timeout=TIMEOUT)

    def test_round_trip_then_cache(self):
        w = self.worker("echo")
        f = self.submit_async("echo", payload=b"q1", priority=3, submitter="strategy",
                              request_id="rt-1", timeout_ms=20000)
        t = w.next()
        self.assertEqual((t.request_id, t.queue, t.type, t.payload), ("rt-1", "echo", "t.Req", b"q1"))
        self.assertEqual((t.priority, t.submitter, t.delivery_count), (3, "strategy", 1))
        self.assertTrue(0 < t.timeout_ms <= 20000)
        self.assertGreater(t.enqueued_ms, 0)
        self.respond(t, b"a1")
        r = f.result()
        self.assertEqual((r.request_id, r.type, r.payload, r.error, r.cached),
                         ("rt-1", "t.Resp", b"a1", "", False))
        # The same request again: from the cache, the worker not involved.
        r = self.submit_async("echo", payload=b"q1").result()
        self.assertEqual((r.payload, r.cached), (b"a1", True))
        self.assertTrue(r.request_id.startswith("echo-"))
        q = self.status("echo")
        self.assertEqual((q.cache_hits, q.in_flight, q.depth), (1, 0, 0))
        self.assertTrue(w.tasks.empty())
        # Answered already: Respond finds nothing.
        with self.assertRaises(grpc.RpcError) as cm:
            self.respond(t)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_worker_error_text_is_an_answer_not_cached(self):
        w = self.worker("echo")
        f = self.submit_async("echo", payload=b"err")
        self.respond(w.next(), payload=b"", error="model refused")
        r = f.result()
        self.assertEqual((r.error, r.cached), ("model refused", False))
        # Not cached: the next equal request reaches the worker.
        f = self.submit_async("echo", payload=b"err")
        self.respond(w.next(), payload=b"fine")
        self.assertEqual(f.result().payload, b"fine")

    def test_no_worker_fails_at_once(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.submit_async("echo", payload=b"nobody").result()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("no worker", cm.exception.details())
        self.assertEqual(trailer(cm.exception, "jimbot-error"), "no-worker")

    def test_bad_requests(self):
        before = self.status("echo").submitted
        cases = [
            (lambda: self.submit_async("nope").result(), grpc.StatusCode.NOT_FOUND),
            (lambda: self.submit_async("").result(), grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: self.submit_async("echo", type="x" * 300).result(),
             grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: next(iter(self.s.infra.TakeRequests(pb.TakeRequestsRequest(queue="nope"),
                                                         timeout=TIMEOUT))),
             grpc.StatusCode.NOT_FOUND),
            (lambda: next(iter(self.s.infra.TakeRequests(
                pb.TakeRequestsRequest(queue="echo", max_outstanding=1001), timeout=TIMEOUT))),
             grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: next(iter(self.s.infra.TakeRequests(
                pb.TakeRequestsRequest(queue="echo", worker="w\n1"), timeout=TIMEOUT))),
             grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: next(iter(self.s.infra.TakeRequests(
                pb.TakeRequestsRequest(queue="echo", worker="w" * 129), timeout=TIMEOUT))),
             grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: self.s.infra.Respond(pb.QueuedResponse(request_id="nobody-holds-it"),
                                          timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND),
            (lambda: self.s.infra.Respond(pb.QueuedResponse(), timeout=TIMEOUT),
             grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: self.ch.unary_unary("/jimbot.infra.v1.Infrastructure/SubmitRequest")(
                b"\x0a\xff\xff", timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for call, code in cases:
            with self.subTest(code=code):
                with self.assertRaises(grpc.RpcError) as cm:
                    call()
                self.assertEqual(cm.exception.code(), code)
        # Nothing was queued.
        self.assertEqual(self.status("echo").submitted, before)

    def test_request_id_in_use(self):
        w = self.worker("echo")
        f = self.submit_async("echo", payload=b"a", request_id="dup")
        t = w.next()
        with self.assertRaises(grpc.RpcError) as cm:
            self.submit_async("echo", payload=b"b", request_id="dup").result()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        self.respond(t)
        f.result()

    def test_full_queue_answers_resource_exhausted_with_hints(self):
        w = self.worker("echo", max_outstanding=1)
        held = self.submit_async("echo", payload=b"held", bypass_cache=True)
        t = w.next()
        waiting = self.submit_async("echo", payload=b"waits", bypass_cache=True)
        self.wait_queue("echo", lambda q: q.depth == 1)
        with self.assertRaises(grpc.RpcError) as cm:
            self.submit_async("echo", payload=b"refused", bypass_cache=True).result()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(trailer(cm.exception, "jimbot-error"), "queue-full")
        self.assertGreater(int(trailer(cm.exception, "retry-after-ms")), 0)
        self.respond(t)
        self.respond(w.next())
        self.assertEqual(held.result().payload, b"answer")
        self.assertEqual(waiting.result().payload, b"answer")

    def test_timeout_and_call_deadline_answered_by_the_daemon(self):
        w = self.worker("echo", max_outstanding=1)
        held = self.submit_async("echo", payload=b"deadline-held")
        t = w.next()
        # Waiting behind the busy worker: the request's own timeout passes.
        with self.assertRaises(grpc.RpcError) as cm:
            self.submit_async("echo", payload=b"deadline-own", timeout_ms=300).result()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIn("no response from a worker", cm.exception.details())
        # The call's deadline, shorter than the request's timeout: the daemon answers first.
        with self.assertRaises(grpc.RpcError) as cm:
            self.submit_async("echo", payload=b"deadline-call", timeout=2.0).result()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIn("no response from a worker", cm.exception.details())
        # The held request's submitter gives up; the worker's late answer is still taken and
        # cached.
        held.cancel()
        self.respond(t, b"late")
        again = self.submit_async("echo", payload=b"deadline-held").result()
        self.assertEqual((again.payload, again.cached), (b"late", True))

    def test_cancelled_submit_never_reaches_a_worker(self):
        w = self.worker("echo", max_outstanding=1)
        first = self.submit_async("echo", payload=b"first")
        t1 = w.next()
        gone = self.submit_async("echo", payload=b"gone")
        self.wait_queue("echo", lambda q: q.depth == 1)
        gone.cancel()
        self.wait_queue("echo", lambda q: q.depth == 0)
        third = self.submit_async("echo", payload=b"third")
        self.respond(t1)
        t3 = w.next()
        self.assertEqual(t3.payload, b"third")
        self.respond(t3)
        first.result()
        third.result()

    def test_vanished_worker_gives_its_request_back(self):
        w1 = self.worker("echo", name="w1")
        f = self.submit_async("echo", payload=b"again", bypass_cache=True)
        self.assertEqual(w1.next().delivery_count, 1)
        w1.cancel()
        self.workers.remove(w1)
        w2 = self.worker("echo", name="w2")
        t = w2.next()
        self.assertEqual((t.payload, t.delivery_count), (b"again", 2))
        self.respond(t, b"from w2")
        self.assertEqual(f.result().payload, b"from w2")

    def test_poisoned_request(self):
        w = Worker(self.s, "once")
        f = self.submit_async("once", payload=b"crash")
        w.next()
        w.cancel()
        with self.assertRaises(grpc.RpcError) as cm:
            f.result()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.ABORTED)
        self.assertEqual(cm.exception.details(), "request poisoned: handed to 1 worker that went "
                         "away without answering")
        self.assertEqual(trailer(cm.exception, "jimbot-error"), "poisoned")
        self.assertEqual(self.status("once").poisoned, 1)

    def test_budget_queue_refuses_what_its_deadline_cannot_wait_for(self):
        w = Worker(self.s, "claude")
        try:
            f = self.submit_async("claude", payload=b"paid")
            self.respond(w.next())
            f.result()
            with self.assertRaises(grpc.RpcError) as cm:
                self.submit_async("claude", payload=b"over", timeout_ms=2000).result()
            self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertEqual(trailer(cm.exception, "jimbot-error"), "rate-limited")
            self.assertGreater(int(trailer(cm.exception, "retry-after-ms")), 2000)
            q = self.status("claude")
            self.assertEqual((q.budget, q.depth, q.workers), ("claude", 0, 1))
        finally:
            w.cancel()

    def test_status_counts_workers_and_waiting(self):
        w = self.worker("echo", max_outstanding=1)
        q = self.status("echo")
        self.assertEqual((q.budget, q.max_depth, q.workers, q.depth), ("none", 1, 1, 0))
        f1 = self.submit_async("echo", payload=b"s1", bypass_cache=True)
        t = w.next()
        f2 = self.submit_async("echo", payload=b"s2", bypass_cache=True)
        q = self.wait_queue("echo", lambda q: q.depth == 1)
        self.assertEqual(q.in_flight, 1)
        st = self.s.infra.GetResourceStatus(pb.GetResourceStatusRequest(), timeout=TIMEOUT)
        self.assertEqual(st.queue_depths["echo"], 1)
        self.respond(t)
        self.respond(w.next())
        f1.result()
        f2.result()


class QueueDrainTest(unittest.TestCase):
    def test_sigterm_ends_submits_and_workers_unavailable(self):
        d = jbtest.Daemon(CONFIG)
        try:
            ch = d.channel()
            s = jbtest.Stubs(ch)
            w = Worker(s, "echo", max_outstanding=1)
            held = s.infra.SubmitRequest.future(pb.QueuedRequest(queue="echo", payload=b"h"),
                                                timeout=TIMEOUT)
            w.next()
            d.proc.send_signal(signal.SIGTERM)
            with self.assertRaises(grpc.RpcError) as cm:
                held.result()
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
            w.thread.join(timeout=TIMEOUT)
            self.assertEqual(w.code, grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(d.wait(), 0)
            ch.close()
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main()
