"""jimbot.testing.MockInfrastructure, without any server.

* GPU leases: an immediate grant (device, lease id, expiry), exclusivity
  (one holder per device, never two), the serving order (priority
  components in their list's order, then priority, then first come) with
  the queue positions each waiter is told, several devices, withdrawing a
  waiter (cancel, timeout), releasing by id (the holder loses its lease),
  expiry after the expiring warning (a FakeClock, and the real clock), bad
  input;
* the budget: spending, not granted with retry_after from the sliding
  window, count 0 = 1, counts that could never be granted, shares, waiting
  with priorities, a wait that runs out;
* the request queues: a round trip with the fields a worker sees, a
  worker's error text, priority then arrival, no worker, a full queue, a
  worker that leaves (redelivery with delivery_count 2) and poison after
  max_deliveries, the cache (hit without a worker, expiry, bypass, the
  byte bound), coalescing (and the priority it raises), deadlines and
  cancelled submits that never reach a worker, pacing by the budget
  (admission by deadline, waiting for the window, budget none), bad input;
* status() reflecting all of it, and close().
"""

import asyncio
import unittest

from jimbot import errors
from jimbot.infrastructure.serialization.strategy_events_pb2 import (StrategyRequest,
                                                                     StrategyResponse)
from jimbot.testing import FakeClock, MockInfrastructure

STEP = 10.0  # seconds any single wait may take before the test fails


class GpuTest(unittest.IsolatedAsyncioTestCase):

    async def test_grant_release_and_status(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, max_allocation_seconds=60)
        async with infra.gpu("training", reason="epoch 1") as lease:
            self.assertEqual(lease.device, 0)
            self.assertTrue(lease.lease_id)
            self.assertEqual(lease.expires_at, clock() + 60)
            self.assertIsNone(lease.position)
            self.assertTrue(lease.granted.is_set())
            st = await infra.status()
            self.assertFalse(st.gpu_available)
            self.assertEqual(st.gpu_holder, "training")
            self.assertEqual(st.gpus[0].lease_id, lease.lease_id)
            self.assertEqual(st.gpus[0].reason, "epoch 1")
            self.assertGreater(st.gpus[0].holder_pid, 0)
            clock.advance(2.5)
        self.assertTrue(lease.ended.is_set())
        self.assertFalse(lease.lost)
        self.assertEqual(lease.release_info.held_ms, 2500)
        st = await infra.status()
        self.assertTrue(st.gpu_available)
        self.assertTrue(st.gpus[0].available)
        self.assertEqual(st.gpu_source, "config")
        # Releasing twice is harmless.
        self.assertEqual((await lease.release()).held_ms, 2500)
        await infra.close()

    async def test_seconds_shorter_than_the_cap(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, max_allocation_seconds=60)
        lease = await infra.acquire_gpu("inference", seconds=5)
        self.assertEqual(lease.expires_at, clock() + 5)
        await lease.release()
        lease = await infra.acquire_gpu("inference", seconds=600)
        self.assertEqual(lease.expires_at, clock() + 60)
        await lease.release()

    async def test_waiters_are_served_in_order_one_at_a_time(self):
        infra = MockInfrastructure(priority_components=["training", "inference"])
        holder = await infra.acquire_gpu("analytics")
        positions = {}
        names = ["x-low", "x-high", "inference", "training", "x-high-2"]
        requests = [("x", 0), ("x", 5), ("inference", -3), ("training", 0), ("x", 5)]
        leases = []
        for name, (component, prio) in zip(names, requests):
            leases.append(infra.start_gpu(component, priority=prio, reason=name,
                                          on_queued=lambda p, n=name: positions.setdefault(
                                              n, []).append(p)))
        want = ["training", "inference", "x-high", "x-high-2", "x-low"]
        st = await infra.status()
        self.assertEqual([w.reason for w in st.gpu_waiters], want)
        self.assertEqual([w.position for w in st.gpu_waiters], [1, 2, 3, 4, 5])
        self.assertEqual(st.gpu_waiting, 5)
        by_name = dict(zip(names, leases))
        self.assertEqual({n: by_name[n].position for n in names},
                         {n: want.index(n) + 1 for n in names})
        # x-low was first alone (1), then pushed back as the others arrived.
        self.assertEqual(positions["x-low"], [1, 2, 3, 4, 5])

        order = []
        current = holder
        while True:
            await current.release()
            granted = [lease for lease in leases if lease.granted.is_set()
                       and not lease.ended.is_set()]
            self.assertLessEqual(len(granted), 1)       # never two holders
            if not granted:
                break
            current = granted[0]
            order.append(current.request.reason)
            self.assertEqual(current.device, 0)
        self.assertEqual(order, want)
        # Each waiter was told position 1 before its grant.
        for n in names:
            self.assertEqual(positions[n][-1], 1, n)

    async def test_two_devices(self):
        infra = MockInfrastructure(devices=2)
        a = await infra.acquire_gpu("a")
        b = await infra.acquire_gpu("b")
        self.assertEqual({a.device, b.device}, {0, 1})
        c = infra.start_gpu("c")
        self.assertEqual(c.position, 1)
        await b.release()
        await asyncio.wait_for(c.wait_granted(), STEP)
        self.assertEqual(c.device, b.device)
        st = await infra.status()
        self.assertEqual(len(st.gpus), 2)
        self.assertFalse(st.gpu_available)
        await infra.close()
        self.assertTrue(a.ended.is_set() and c.ended.is_set())

    async def test_cancelled_or_timed_out_waiters_leave_the_queue(self):
        infra = MockInfrastructure()
        holder = await infra.acquire_gpu("a")
        first = infra.start_gpu("b")
        task = asyncio.ensure_future(infra.acquire_gpu("c"))
        await asyncio.sleep(0)
        self.assertEqual(len(infra.waiters()), 2)
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertEqual(infra.waiters(), [first])
        with self.assertRaises(errors.DeadlineExceededError):
            await infra.acquire_gpu("d", timeout=0.01)
        self.assertEqual(infra.waiters(), [first])
        await first.release()                 # a waiter withdrawn
        self.assertEqual(infra.waiters(), [])
        with self.assertRaises(errors.ClosedError):
            await first.wait_granted()
        await holder.release()
        self.assertTrue((await infra.status()).gpu_available)

    async def test_release_by_id(self):
        infra = MockInfrastructure()
        lease = await infra.acquire_gpu("a")
        with self.assertRaises(errors.NotFoundError):
            await infra.release_gpu("no-such-lease")
        with self.assertRaises(errors.InvalidArgumentError):
            await infra.release_gpu("")
        self.assertFalse(lease.ended.is_set())
        resp = await infra.release_gpu(lease.lease_id)
        self.assertEqual(resp.device, 0)
        self.assertTrue(lease.ended.is_set())
        self.assertIsInstance(lease.error, errors.LeaseLostError)
        with self.assertRaises(errors.LeaseLostError):
            lease.check()
        with self.assertRaises(errors.NotFoundError):
            await infra.release_gpu(lease.lease_id)

    async def test_bad_input(self):
        infra = MockInfrastructure()
        for kwargs in ({"component": ""}, {"component": "x" * 129},
                       {"component": "a", "reason": "r" * 257},
                       {"component": "a", "priority": 1 << 40}):
            with self.assertRaises(errors.InvalidArgumentError, msg=kwargs):
                await infra.acquire_gpu(**kwargs)
        self.assertEqual(infra.waiters(), [])
        self.assertTrue((await infra.status()).gpu_available)

    async def test_max_waiters(self):
        infra = MockInfrastructure(max_waiters=1)
        await infra.acquire_gpu("a")
        infra.start_gpu("b")
        with self.assertRaises(errors.BackpressureError):
            infra.start_gpu("c")
        await infra.close()


class ExpiryTest(unittest.IsolatedAsyncioTestCase):

    async def test_expiring_then_expired_with_a_fake_clock(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, max_allocation_seconds=10,
                                   expiry_warning_seconds=3)
        lease = await infra.acquire_gpu("training")
        nxt = infra.start_gpu("inference")
        clock.advance(6.9)
        self.assertFalse(lease.expiring.is_set())
        clock.advance(0.1)
        self.assertTrue(lease.expiring.is_set())
        self.assertFalse(lease.ended.is_set())
        clock.advance(3)
        self.assertTrue(lease.ended.is_set())
        self.assertIsInstance(lease.error, errors.LeaseExpiredError)
        self.assertTrue(lease.lost)
        # The device went on to the next waiter at once.
        self.assertTrue(nxt.granted.is_set())
        self.assertEqual(infra.holders(), [nxt])
        await lease.release()                 # after expiry: nothing to do
        self.assertIsInstance(lease.error, errors.LeaseExpiredError)
        await infra.close()

    async def test_expiry_with_the_real_clock(self):
        infra = MockInfrastructure(max_allocation_seconds=0.2, expiry_warning_seconds=0.1)
        async with infra.gpu("training") as lease:
            await asyncio.wait_for(lease.expiring.wait(), STEP)
            await asyncio.wait_for(lease.ended.wait(), STEP)
        self.assertIsInstance(lease.error, errors.LeaseExpiredError)
        await infra.close()


class QuotaTest(unittest.IsolatedAsyncioTestCase):

    async def test_spend_until_refused_then_the_window_frees(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, hourly_limit=3, window_seconds=100)
        g = await infra.api_quota("strategy", count=2)
        self.assertEqual((g.granted, g.remaining, g.limit), (True, 1, 3))
        clock.advance(10)
        g = await infra.api_quota("strategy", count=0)          # 0 means 1
        self.assertEqual(g.remaining, 0)
        with self.assertRaises(errors.RateLimitedError) as cm:
            await infra.api_quota("strategy")
        self.assertEqual(cm.exception.retry_after, 90.0)        # the first spend frees
        self.assertEqual(cm.exception.retry_after_ms, 90000)
        self.assertEqual((cm.exception.remaining, cm.exception.limit), (0, 3))
        with self.assertRaises(errors.RateLimitedError) as cm:
            await infra.api_quota("strategy", count=3)
        self.assertEqual(cm.exception.retry_after, 100.0)       # both spends must free
        st = await infra.status()
        self.assertEqual((st.claude_requests_used, st.claude_requests_remaining), (3, 0))
        self.assertEqual(st.claude_next_slot_ms, int((clock() + 90) * 1000))
        self.assertEqual([(c.component, c.used) for c in st.claude_components],
                         [("strategy", 3)])
        clock.advance(90)
        g = await infra.api_quota("strategy", count=2)
        self.assertEqual(g.remaining, 0)

    async def test_counts_that_can_never_be_granted(self):
        infra = MockInfrastructure(hourly_limit=5, shares={"analytics": {"limit": 2}})
        for component, count in (("strategy", 6), ("analytics", 3), ("", 1),
                                 ("strategy", -1), ("strategy", 1 << 40)):
            with self.assertRaises(errors.InvalidArgumentError, msg=(component, count)):
                await infra.api_quota(component, count=count)
        self.assertEqual((await infra.status()).claude_requests_used, 0)

    async def test_shares(self):
        infra = MockInfrastructure(hourly_limit=5, shares={"analytics": 2})
        await infra.api_quota("analytics", count=2)
        with self.assertRaises(errors.RateLimitedError):
            await infra.api_quota("analytics")
        g = await infra.api_quota("strategy", count=3)
        self.assertEqual(g.remaining, 0)
        st = await infra.status()
        self.assertEqual({c.component: (c.used, c.share) for c in st.claude_components},
                         {"analytics": (2, 2), "strategy": (3, 0)})

    async def test_waiters_by_priority(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, hourly_limit=2, window_seconds=100)
        await infra.api_quota("strategy")
        clock.advance(1)
        await infra.api_quota("strategy")
        low = asyncio.ensure_future(infra.api_quota("a", wait=500, priority=0))
        high = asyncio.ensure_future(infra.api_quota("b", wait=500, priority=5))
        await asyncio.sleep(0)
        self.assertEqual((await infra.status()).claude_waiting, 2)
        clock.advance(99)                    # the first spend frees: one request
        await asyncio.sleep(0)
        self.assertTrue(high.done())
        self.assertFalse(low.done())
        self.assertEqual(high.result().remaining, 0)
        clock.advance(1)                     # the second frees
        self.assertEqual((await asyncio.wait_for(low, STEP)).remaining, 0)

    async def test_nobody_overtakes_a_waiter(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, hourly_limit=3, window_seconds=100,
                                   shares={"capped": 1})
        await infra.api_quota("strategy", count=2)       # t=0
        clock.advance(5)
        await infra.api_quota("capped")                  # t=5: its share is used up
        clock.advance(5)                                 # t=10, the budget is full
        capped = asyncio.ensure_future(infra.api_quota("capped", wait=500, priority=9))
        big = asyncio.ensure_future(infra.api_quota("a", wait=500, count=2, priority=5))
        await asyncio.sleep(0)
        # The waiter ahead needs two: a lower request does not overtake it, so
        # it must wait for three to free (t=100 and t=105); the share-held
        # waiter is passed over.
        with self.assertRaises(errors.RateLimitedError) as cm:
            await infra.api_quota("b", priority=1)
        self.assertEqual(cm.exception.retry_after, 95.0)
        self.assertEqual(cm.exception.remaining, 0)
        clock.advance(90)                                # t=100: strategy's two free
        await asyncio.sleep(0)
        self.assertEqual(big.result().remaining, 0)
        self.assertFalse(capped.done())
        clock.advance(5)                                 # t=105: capped's own spend frees
        self.assertEqual((await asyncio.wait_for(capped, STEP)).remaining, 0)

    async def test_a_wait_that_runs_out(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, hourly_limit=1, window_seconds=100)
        await infra.api_quota("strategy")
        task = asyncio.ensure_future(infra.api_quota("strategy", wait=5))
        await asyncio.sleep(0)
        clock.advance(5)
        with self.assertRaises(errors.RateLimitedError) as cm:
            await asyncio.wait_for(task, STEP)
        self.assertEqual(cm.exception.retry_after, 95.0)
        self.assertEqual((await infra.status()).claude_waiting, 0)

    async def test_waiting_with_the_real_clock(self):
        infra = MockInfrastructure(hourly_limit=1, window_seconds=0.2)
        await infra.api_quota("strategy")
        g = await asyncio.wait_for(infra.api_quota("strategy", wait=STEP), STEP)
        self.assertEqual(g.remaining, 0)
        await infra.close()

    async def test_close(self):
        infra = MockInfrastructure(hourly_limit=1)
        await infra.api_quota("strategy")
        task = asyncio.ensure_future(infra.api_quota("strategy", wait=STEP))
        await asyncio.sleep(0)
        await infra.close()
        with self.assertRaises(errors.ClosedError):
            await task
        with self.assertRaises(errors.ClosedError):
            await infra.status()



def ask(infra, question, queue="claude", **kw):
    """A submit as a task, queued by the time the caller's next await returns."""
    kw.setdefault("timeout", 30)
    return asyncio.ensure_future(infra.submit_detailed(queue, StrategyRequest(question=question),
                                                       **kw))


async def handed(worker):
    return await asyncio.wait_for(worker.__anext__(), STEP)


def answer(req, who="w"):
    return req.respond(StrategyResponse(recommendation=f"{who}:{req.message.question}"))


async def queue_status(infra, name="claude"):
    return next(q for q in (await infra.status()).queues if q.name == name)


FREE = {"claude": {"budget": "none"}}


class QueueTest(unittest.IsolatedAsyncioTestCase):

    async def test_round_trip(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, queues=FREE)
        async with infra.take("claude", worker="w1") as w:
            task = ask(infra, "buy?", priority=3, component="advisor", timeout=20,
                       request_id="r-1")
            req = await handed(w)
            self.assertEqual((req.request_id, req.queue, req.type, req.priority, req.submitter,
                              req.delivery_count, req.timeout_ms),
                             ("r-1", "claude", "jimbot.StrategyRequest", 3, "advisor", 1, 20000))
            self.assertEqual(req.message.question, "buy?")
            self.assertGreater(req.enqueued_ms, 0)
            q = await queue_status(infra)
            self.assertEqual((q.depth, q.in_flight, q.workers, q.submitted), (0, 1, 1, 1))
            await answer(req)
            self.assertTrue(req.answered)
            resp = await task
            self.assertEqual((resp.request_id, resp.cached, resp.type),
                             ("r-1", False, "jimbot.StrategyResponse"))
            self.assertEqual(resp.message.recommendation, "w:buy?")
            with self.assertRaises(errors.NotFoundError):      # answered already
                await answer(req)
            msg = await asyncio.gather(infra.submit("claude", StrategyRequest(question="x"),
                                                    response_type=StrategyResponse),
                                       self._serve_one(w))
            self.assertEqual(msg[0].recommendation, "w:x")
        self.assertEqual((await queue_status(infra)).workers, 0)
        await infra.close()

    async def _serve_one(self, w):
        await answer(await handed(w))

    async def test_worker_error_is_raised_and_not_cached(self):
        infra = MockInfrastructure(queues=FREE)
        w = infra.take("claude")
        task = ask(infra, "q")
        await (await handed(w)).fail("model overloaded")
        with self.assertRaises(errors.WorkerError) as cm:
            await task
        self.assertEqual(cm.exception.text, "model overloaded")
        self.assertEqual((await queue_status(infra)).cache_entries, 0)
        task = ask(infra, "r")
        with self.assertRaises(errors.InvalidArgumentError):
            await (await handed(w)).fail("")
        task.cancel()
        await infra.close()

    async def test_priority_then_arrival(self):
        infra = MockInfrastructure(queues=FREE)
        w = infra.take("claude", max_outstanding=1)
        tasks = [ask(infra, "busy")]
        busy = await handed(w)
        for question, prio in [("low", 0), ("high", 5), ("mid", 1), ("high-2", 5)]:
            tasks.append(ask(infra, question, priority=prio))
        await asyncio.sleep(0)
        self.assertEqual((await queue_status(infra)).depth, 4)
        await answer(busy)
        order = []
        for _ in range(4):
            req = await handed(w)
            order.append(req.message.question)
            await answer(req)
        self.assertEqual(order, ["high", "high-2", "mid", "low"])
        self.assertEqual([(await t).message.recommendation for t in tasks],
                         ["w:busy", "w:low", "w:high", "w:mid", "w:high-2"])
        await infra.close()

    async def test_no_worker_and_full_queue(self):
        infra = MockInfrastructure(queues={"claude": {"budget": "none", "max_depth": 2}})
        with self.assertRaises(errors.UnavailableError) as cm:
            await infra.submit("claude", StrategyRequest(question="anyone?"))
        self.assertEqual(cm.exception.reason, "no-worker")
        w = infra.take("claude")
        tasks = [ask(infra, "busy"), ask(infra, "a"), ask(infra, "b")]
        await asyncio.sleep(0)
        with self.assertRaises(errors.BackpressureError) as cm:
            await infra.submit("claude", StrategyRequest(question="c"))
        self.assertEqual((cm.exception.reason, cm.exception.retry_after_ms), ("queue-full", 1000))
        # An equal request joins the waiting one: no depth added.
        tasks.append(ask(infra, "a"))
        await asyncio.sleep(0)
        self.assertEqual((await queue_status(infra)).coalesced, 1)
        for _ in range(3):
            await answer(await handed(w))
        self.assertEqual([(await t).message.recommendation for t in tasks],
                         ["w:busy", "w:a", "w:b", "w:a"])
        await w.close()
        with self.assertRaises(errors.UnavailableError):
            await infra.submit("claude", StrategyRequest(question="gone"))
        await infra.close()

    async def test_worker_leaving_then_poison(self):
        infra = MockInfrastructure(queues={"claude": {"budget": "none", "max_deliveries": 2}})
        w1 = infra.take("claude")
        task = ask(infra, "crashes everyone")
        first = await handed(w1)
        self.assertEqual(w1.held(), [first.request_id])
        await w1.close()
        with self.assertRaises(errors.NotFoundError):   # given back with its worker
            await answer(first)
        self.assertEqual((await queue_status(infra)).depth, 1)
        w2 = infra.take("claude")
        second = await handed(w2)
        self.assertEqual((second.request_id, second.delivery_count), (first.request_id, 2))
        await w2.close()
        with self.assertRaises(errors.PoisonedRequestError) as cm:
            await task
        self.assertEqual(cm.exception.reason, "poisoned")
        self.assertEqual([p.request_id for p in infra.poisoned("claude")], [first.request_id])
        q = await queue_status(infra)
        self.assertEqual((q.poisoned, q.depth, q.in_flight, q.workers), (1, 0, 0, 0))
        # A redelivered request that is answered is not poisoned.
        w3, w4 = infra.take("claude"), None
        task = ask(infra, "fine")
        await handed(w3)
        w4 = infra.take("claude")
        await w3.close()
        req = await handed(w4)
        self.assertEqual(req.delivery_count, 2)
        await answer(req, "w4")
        self.assertEqual((await task).message.recommendation, "w4:fine")
        await infra.close()

    async def test_cache_hit_expiry_bypass(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, queues=FREE, cache_ttl=10)
        w = infra.take("claude")
        task = ask(infra, "same")
        await answer(await handed(w))
        first = await task
        self.assertFalse(first.cached)
        await w.close()
        hit = await infra.submit_detailed("claude", StrategyRequest(question="same"))  # no worker
        self.assertTrue(hit.cached)
        self.assertNotEqual(hit.request_id, first.request_id)
        self.assertEqual(hit.message.recommendation, "w:same")
        w = infra.take("claude")
        task = ask(infra, "same", bypass_cache=True)
        await answer(await handed(w), "w2")
        self.assertFalse((await task).cached)
        self.assertEqual((await infra.submit("claude", StrategyRequest(question="same")))
                         .recommendation, "w2:same")          # replaced
        clock.advance(10)
        task = ask(infra, "same")
        req = await handed(w)                                 # expired: to the worker
        await answer(req, "w3")
        self.assertFalse((await task).cached)
        q = await queue_status(infra)
        self.assertEqual((q.cache_hits, q.cache_entries), (2, 1))
        self.assertGreater(q.cache_bytes, 0)
        await infra.close()

    async def test_cache_bound_drops_the_oldest(self):
        infra = MockInfrastructure(queues=FREE, cache_max_bytes=120)
        w = infra.take("claude")
        for question in ("one", "two", "three"):
            task = ask(infra, question)
            await answer(await handed(w))
            await task
        q = await queue_status(infra)
        self.assertLessEqual(q.cache_bytes, 120)
        self.assertLess(q.cache_entries, 3)
        task = ask(infra, "three")
        await asyncio.sleep(0)
        self.assertTrue(task.done() and task.result().cached)
        task = ask(infra, "one")
        await answer(await handed(w))                          # dropped: to the worker
        self.assertFalse((await task).cached)
        await infra.close()

    async def test_coalescing(self):
        infra = MockInfrastructure(queues=FREE)
        w = infra.take("claude")
        tasks = [ask(infra, "busy"), ask(infra, "popular"), ask(infra, "low")]
        busy = await handed(w)
        tasks += [ask(infra, "popular", priority=9), ask(infra, "popular")]
        await asyncio.sleep(0)
        q = await queue_status(infra)
        self.assertEqual((q.depth, q.coalesced, q.submitted), (2, 2, 5))
        await answer(busy)
        req = await handed(w)                 # raised to priority 9: ahead of "low"
        self.assertEqual((req.message.question, req.priority), ("popular", 9))
        await answer(req)
        await answer(await handed(w))
        answers = [await t for t in tasks]
        self.assertEqual([a.message.recommendation for a in answers],
                         ["w:busy", "w:popular", "w:low", "w:popular", "w:popular"])
        self.assertEqual(len({a.request_id for a in answers}), 5)
        self.assertFalse(any(a.cached for a in answers))
        await infra.close()

    async def test_deadline_and_cancel_never_reach_a_worker(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, queues={"claude": {"budget": "none",
                                                                   "timeout_ms": 5000}})
        w = infra.take("claude")
        busy_task = ask(infra, "busy", timeout=None)
        busy = await handed(w)
        self.assertEqual(busy.timeout_ms, 5000)            # the queue's default
        late = ask(infra, "late", timeout=2)
        gone = ask(infra, "gone")
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        self.assertEqual((await queue_status(infra)).depth, 1)
        clock.advance(2)
        with self.assertRaises(errors.DeadlineExceededError):
            await late
        self.assertEqual((await queue_status(infra)).depth, 0)
        clock.advance(3)                                    # the held one times out too
        with self.assertRaises(errors.DeadlineExceededError):
            await busy_task
        await answer(busy)                                  # still accepted, and cached
        task = ask(infra, "next")
        self.assertEqual((await handed(w)).message.question, "next")
        self.assertEqual((await queue_status(infra)).cache_entries, 1)
        task.cancel()
        await infra.close()

    async def test_pacing_by_the_budget(self):
        clock = FakeClock()
        infra = MockInfrastructure(clock=clock, hourly_limit=3, window_seconds=100,
                                   queues={"claude": {}, "free": {"budget": "none"}})
        w = infra.take("claude", max_outstanding=10)
        for i in range(3):
            task = ask(infra, f"q{i}")
            await answer(await handed(w))
            await task
            clock.advance(1)
        st = await infra.status()
        self.assertEqual(st.claude_requests_remaining, 0)
        self.assertEqual([(c.component, c.used) for c in st.claude_components],
                         [("queue:claude", 3)])
        with self.assertRaises(errors.RateLimitedError) as cm:   # t=3: a unit frees at t=100
            await infra.submit("claude", StrategyRequest(question="q3"), timeout=2)
        self.assertEqual((cm.exception.reason, cm.exception.retry_after_ms), ("rate-limited",
                                                                              97000))
        self.assertTrue((await infra.submit_detailed(
            "claude", StrategyRequest(question="q0"))).cached)   # spends nothing
        waiting = ask(infra, "q3", timeout=200)
        await asyncio.sleep(0)
        q = await queue_status(infra)
        self.assertEqual((q.depth, q.in_flight), (1, 0))
        clock.advance(97)
        req = await handed(w)
        self.assertEqual(req.message.question, "q3")
        await answer(req)
        self.assertEqual((await waiting).message.recommendation, "w:q3")
        fw = infra.take("free")
        task = ask(infra, "unpaced", queue="free")
        await answer(await handed(fw))
        self.assertEqual((await task).message.recommendation, "w:unpaced")
        await infra.close()

    async def test_pacing_with_the_real_clock(self):
        infra = MockInfrastructure(hourly_limit=1, window_seconds=0.2)
        w = infra.take("claude")

        async def serve():
            async for req in w:
                await answer(req)
        server = asyncio.ensure_future(serve())
        await infra.submit("claude", StrategyRequest(question="a"), timeout=STEP)
        msg = await infra.submit("claude", StrategyRequest(question="b"), timeout=STEP)
        self.assertEqual(msg.recommendation, "w:b")
        await infra.close()
        await asyncio.wait_for(server, STEP)             # the worker's loop ends

    async def test_bad_input(self):
        infra = MockInfrastructure(queues=FREE)
        w = infra.take("claude")
        with self.assertRaises(errors.NotFoundError):
            await infra.submit("nope", StrategyRequest())
        with self.assertRaises(errors.NotFoundError):
            infra.take("nope")
        for bad in ("", "q" * 65):
            with self.assertRaises(errors.InvalidArgumentError):
                await infra.submit(bad, StrategyRequest())
        with self.assertRaises(errors.InvalidArgumentError):
            await infra.submit("claude", b"x", type="t" * 257)
        with self.assertRaises(errors.InvalidArgumentError):
            await infra.submit("claude", StrategyRequest(), timeout=0)
        with self.assertRaises(errors.InvalidArgumentError):
            infra.take("claude", max_outstanding=1001)
        with self.assertRaises(TypeError):
            await infra.submit("claude", b"raw")                # bytes need a type
        task = ask(infra, "x", request_id="dup")
        await handed(w)
        with self.assertRaises(errors.AlreadyExistsError):
            await infra.submit("claude", StrategyRequest(question="y"), request_id="dup")
        raw = asyncio.ensure_future(infra.submit("claude", b"\x01", type=""))
        w2 = infra.take("claude")
        req = await handed(w2)
        self.assertEqual(req.message, b"\x01")
        await req.respond(b"\x02", type="")
        self.assertEqual(await raw, b"\x02")
        task.cancel()
        await infra.close()

    async def test_close_ends_submits_and_workers(self):
        infra = MockInfrastructure(queues=FREE)
        w = infra.take("claude")
        task = ask(infra, "x")
        await handed(w)
        await infra.close()
        with self.assertRaises(errors.ClosedError):
            await task
        with self.assertRaises(StopAsyncIteration):
            await w.__anext__()
        with self.assertRaises(errors.ClosedError):
            await infra.submit("claude", StrategyRequest())


if __name__ == "__main__":
    unittest.main()
