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
* status() reflecting all of it, and close().
"""

import asyncio
import unittest

from jimbot import errors
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


if __name__ == "__main__":
    unittest.main()
