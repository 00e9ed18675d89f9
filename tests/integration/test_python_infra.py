"""jimbot.Infrastructure against a real jimbotd (the resource coordinator).

Each test class gets build/bin/jimbotd on a free loopback port with a
temporary data dir and its own configuration (jbtest.Daemon), one GPU device
from the configuration (no NVML):

* GPU leases: several Python clients compete (in this process, each with a
  channel of its own, and in child processes that take and give back the
  lease in turn, each proving exclusivity with an O_EXCL file while it
  holds): never two holders; waiters are served by priority component,
  then priority, then arrival, as status's gpu_waiters says; a holder
  process SIGKILLed hands the device to the next waiter; a cancelled block
  releases; the status names the holder;
* expiry (max_allocation_seconds 2, expiry_warning_seconds 1): the expiring
  warning, then LeaseExpiredError, and the next waiter is served;
* re-attach: the daemon restarted (SIGTERM, and SIGKILL) under a held lease:
  the client re-attaches to the same lease and device;
* max_waiters 1: one waiter more is BackpressureError with a retry hint;
  a waiter queues again after a daemon restart and is served;
* the API budget (hourly_limit 3): spends, not granted with retry_after,
  the spent budget survives a restart (SIGTERM and SIGKILL, same data dir);
  a component's share;
  waiting with priorities (window_seconds 4: the budget frees during the
  test and the higher-priority waiter is granted first), a wait that runs
  out;
* bad input (empty or oversized component, a count over the hourly limit,
  ReleaseGpu of an unknown or empty lease id) is refused with the mapped
  error and changes nothing in GetResourceStatus.

Timeouts only keep a broken daemon from hanging the suite; nothing here
asserts how fast things happen.
"""

import asyncio
import os
import signal
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jimbot  # noqa: E402
from jimbot import errors  # noqa: E402

from jbtest import Daemon  # noqa: E402

STEP = 30.0  # seconds any single wait may take before the test fails

GPU = """\
resource_coordinator:
  max_waiters: {max_waiters}
  gpu:
    devices: 1
    nvml_library: ''
    max_allocation_seconds: {max_alloc}
    expiry_warning_seconds: {warning}
    priority_components: [training, inference]
    keepalive_ms: 200
  claude:
    hourly_limit: {limit}
    window_seconds: {window}
{shares}"""


def config(max_alloc=300, warning=30, limit=100, window=3600, max_waiters=1024, shares=None):
    lines = "".join(f"      {c}: {{limit: {n}}}\n" for c, n in (shares or {}).items())
    return GPU.format(max_alloc=max_alloc, warning=warning, limit=limit, window=window,
                      max_waiters=max_waiters, shares=("    shares:\n" + lines) if lines else "")


# A child process holding the GPU: prints "granted <lease_id>" and holds until killed.
HOLDER = """
import asyncio, sys, jimbot
async def main():
    async with jimbot.Infrastructure(sys.argv[1]) as infra:
        async with infra.gpu(sys.argv[2], reason="child") as lease:
            print("granted", lease.lease_id, flush=True)
            await asyncio.sleep(3600)
asyncio.run(main())
"""

# A child that takes the GPU ROUNDS times; while it holds, the file MARK must be its own.
TAKER = """
import asyncio, os, sys, jimbot
addr, component, mark, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def main():
    async with jimbot.Infrastructure(addr) as infra:
        for _ in range(rounds):
            async with infra.gpu(component, reason="taker"):
                fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if shared
                os.write(fd, component.encode())
                os.close(fd)
                await asyncio.sleep(0.02)
                os.unlink(mark)
    print("done", component, flush=True)
asyncio.run(main())
"""


class DaemonTestCase(unittest.IsolatedAsyncioTestCase):
    """A jimbotd of its own for each test, configured with CONFIG."""

    CONFIG = config()

    async def asyncSetUp(self):
        self.daemon = await asyncio.to_thread(Daemon, self.CONFIG)
        self.addr = self.daemon.address
        self.clients = []
        self.infra = self.client()
        self.children = []

    def client(self, **kw):
        infra = jimbot.Infrastructure(self.addr, **kw)
        self.clients.append(infra)
        return infra

    async def asyncTearDown(self):
        for proc in self.children:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for infra in self.clients:
            await infra.close()
        await asyncio.to_thread(self.daemon.stop)
        self.daemon.close()

    async def restart(self, sig=signal.SIGTERM):
        """Stops the daemon with @sig and starts it again (same port and data dir)."""
        await asyncio.to_thread(self.daemon.stop, sig)
        await asyncio.to_thread(self.daemon.start)

    async def until(self, cond, what):
        """Waits for the coroutine function @cond to return true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        while True:
            try:
                value = await cond()
            except errors.UnavailableError:
                # A channel still reconnecting after a restart fails fast; ask again.
                value = None
            if value:
                return value
            if loop.time() > deadline:
                self.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def waiters(self):
        st = await self.infra.status()
        return [(w.component, w.priority, w.reason) for w in st.gpu_waiters]

    async def child(self, script, *args):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, self.addr, *args, stdout=asyncio.subprocess.PIPE)
        self.children.append(proc)
        return proc


class GpuTest(DaemonTestCase):

    async def test_grant_status_release(self):
        async with self.infra.gpu("training", reason="epoch 1") as lease:
            self.assertEqual(lease.device, 0)
            self.assertTrue(lease.lease_id)
            self.assertGreater(lease.expires_ms, 0)
            st = await self.infra.status()
            self.assertFalse(st.gpu_available)
            self.assertEqual(st.gpu_holder, "training")
            self.assertEqual(st.gpu_source, "config")
            self.assertEqual(len(st.gpus), 1)
            d = st.gpus[0]
            self.assertEqual((d.index, d.available, d.holder, d.lease_id, d.reason, d.holder_pid),
                             (0, False, "training", lease.lease_id, "epoch 1", os.getpid()))
            self.assertEqual(d.expires_ms, lease.expires_ms)
        self.assertTrue(lease.ended.is_set())
        self.assertIsNone(lease.error)
        self.assertEqual(lease.release_info.device, 0)
        st = await self.infra.status()
        self.assertTrue(st.gpu_available)
        self.assertTrue(st.gpus[0].available)
        with self.assertRaises(errors.NotFoundError):          # released already
            await self.infra.release_gpu(lease.lease_id)

    async def test_waiters_served_by_component_priority_arrival(self):
        holder = await self.infra.acquire_gpu("analytics", reason="holder")
        # name -> (component, priority), queued in this order, each once the previous waits.
        arrivals = [("x-low", "x", 0), ("x-high", "x", 5), ("inference", "inference", -3),
                    ("x-high-2", "x", 5), ("training", "training", 0)]
        want = ["training", "inference", "x-high", "x-high-2", "x-low"]
        leases = {}
        positions = {}
        for i, (name, component, prio) in enumerate(arrivals):
            client = self.client()        # a client (and a channel) each
            leases[name] = client.start_gpu(
                component, priority=prio, reason=name,
                on_queued=lambda p, n=name: positions.setdefault(n, []).append(p))

            async def queued(n=i + 1):
                return len(await self.waiters()) == n
            await self.until(queued, f"{name} waiting")
        st = await self.infra.status()
        self.assertEqual([w.reason for w in st.gpu_waiters], want)
        self.assertEqual([w.position for w in st.gpu_waiters], [1, 2, 3, 4, 5])
        self.assertEqual(st.gpu_waiting, 5)

        async def positions_told():
            return all(leases[n].position == want.index(n) + 1 for n in want)
        await self.until(positions_told, "each waiter told its position")

        order = []
        current = holder
        while len(order) < len(want):
            await current.release()

            async def next_holder():
                held = [n for n, lease in leases.items()
                        if lease.granted.is_set() and not lease.ended.is_set()]
                return held or None
            held = await self.until(next_holder, "the next grant")
            self.assertEqual(len(held), 1, held)          # never two holders
            st = await self.infra.status()
            self.assertEqual(st.gpus[0].reason, held[0])
            order.append(held[0])
            current = leases[held[0]]
            self.assertEqual(current.device, 0)
        await current.release()
        self.assertEqual(order, want)
        for n in want:                                     # position 1 came before the grant
            self.assertEqual(positions[n][-1], 1, (n, positions[n]))

    async def test_competing_processes_never_share(self):
        mark = os.path.join(tempfile.mkdtemp(prefix="jbmark-"), "holder")
        procs = [await self.child(TAKER, f"taker-{i}", mark, "3") for i in range(4)]
        outs = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), STEP * 4)
            outs.append(out.decode().strip())
            self.assertEqual(proc.returncode, 0, outs)
        self.assertEqual(sorted(outs), [f"done taker-{i}" for i in range(4)])
        self.assertFalse(os.path.exists(mark))
        os.rmdir(os.path.dirname(mark))
        self.assertTrue((await self.infra.status()).gpu_available)

    async def test_killed_holder_hands_over_at_once(self):
        proc = await self.child(HOLDER, "training")
        line = (await asyncio.wait_for(proc.stdout.readline(), STEP)).decode().split()
        self.assertEqual(line[0], "granted")
        waiter = self.infra.start_gpu("inference", reason="next")

        async def queued():
            return waiter.position == 1
        await self.until(queued, "the waiter queued")
        st = await self.infra.status()
        self.assertEqual(st.gpus[0].lease_id, line[1])
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.wait_for(waiter.wait_granted(), STEP)
        st = await self.infra.status()
        self.assertEqual((st.gpus[0].holder, st.gpus[0].reason), ("inference", "next"))
        self.assertNotEqual(waiter.lease_id, line[1])
        await waiter.release()

    async def test_cancelled_block_releases(self):
        granted = asyncio.Event()

        async def hold():
            async with self.infra.gpu("training"):
                granted.set()
                await asyncio.sleep(3600)

        task = asyncio.ensure_future(hold())
        await asyncio.wait_for(granted.wait(), STEP)
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task

        async def free():
            return (await self.infra.status()).gpu_available
        await self.until(free, "the release")

    async def test_cancelled_waiter_leaves_the_queue(self):
        holder = await self.infra.acquire_gpu("training")
        task = asyncio.ensure_future(self.client().acquire_gpu("x"))

        async def waiting(n):
            return len(await self.waiters()) == n
        await self.until(lambda: waiting(1), "the waiter")
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await self.until(lambda: waiting(0), "the waiter gone")
        await holder.release()


class MaxWaitersTest(DaemonTestCase):
    CONFIG = config(max_waiters=1)

    async def test_too_many_waiters(self):
        holder = await self.infra.acquire_gpu("training")
        waiter = self.client().start_gpu("x")

        async def queued():
            return waiter.position == 1
        await self.until(queued, "the waiter")
        with self.assertRaises(errors.BackpressureError) as cm:
            await self.client().acquire_gpu("y")
        self.assertIsNotNone(cm.exception.retry_after_ms)
        self.assertEqual(len(await self.waiters()), 1)
        await holder.release()
        await asyncio.wait_for(waiter.wait_granted(), STEP)
        await waiter.release()


class WaiterRestartTest(DaemonTestCase):

    async def test_a_waiter_queues_again_after_a_restart(self):
        proc = await self.child(HOLDER, "analytics")
        line = (await asyncio.wait_for(proc.stdout.readline(), STEP)).decode().split()
        self.assertEqual(line[0], "granted")
        waiter = self.infra.start_gpu("x", reason="patient")

        async def queued():
            return waiter.position == 1
        await self.until(queued, "the waiter")
        await self.restart()

        async def waiting_again():
            return [w.reason for w in (await self.infra.status()).gpu_waiters] == ["patient"]
        await self.until(waiting_again, "the waiter queued again")
        self.assertFalse(waiter.ended.is_set())
        proc.send_signal(signal.SIGKILL)      # the holder (re-attached) goes away
        await proc.wait()
        await asyncio.wait_for(waiter.wait_granted(), STEP)
        self.assertEqual((await self.infra.status()).gpus[0].reason, "patient")
        await waiter.release()


class ExpiryTest(DaemonTestCase):
    CONFIG = config(max_alloc=2, warning=1)

    async def test_expiring_then_expired_then_the_next(self):
        lease = await self.infra.acquire_gpu("training")
        waiter = self.client().start_gpu("inference")
        await asyncio.wait_for(lease.expiring.wait(), STEP)
        await asyncio.wait_for(lease.ended.wait(), STEP)
        self.assertIsInstance(lease.error, errors.LeaseExpiredError)
        with self.assertRaises(errors.LeaseExpiredError):
            lease.check()
        await asyncio.wait_for(waiter.wait_granted(), STEP)
        self.assertEqual(waiter.device, 0)
        await lease.release()                       # nothing to release: harmless
        self.assertIsInstance(lease.error, errors.LeaseExpiredError)
        await waiter.release()


class ReattachTest(DaemonTestCase):
    CONFIG = config(max_alloc=300)

    async def check_reattach(self, sig):
        lease = await self.infra.acquire_gpu("training", reason="long job")
        lease_id, device, expires = lease.lease_id, lease.device, lease.expires_ms
        await self.restart(sig)

        async def reattached():
            return lease.reattaches >= 1 or lease.ended.is_set()
        await self.until(reattached, "the re-attach")
        self.assertIsNone(lease.error)
        self.assertFalse(lease.ended.is_set())
        self.assertTrue(lease.reattached)
        self.assertEqual((lease.lease_id, lease.device, lease.expires_ms),
                         (lease_id, device, expires))
        st = await self.infra.status()
        self.assertEqual((st.gpus[0].lease_id, st.gpus[0].holder), (lease_id, "training"))
        self.assertFalse(st.gpus[0].restored)
        await lease.release()
        self.assertIsNone(lease.error)
        self.assertTrue((await self.infra.status()).gpu_available)

    async def test_reattach_after_sigterm(self):
        await self.check_reattach(signal.SIGTERM)

    async def test_reattach_after_sigkill(self):
        await self.check_reattach(signal.SIGKILL)


class QuotaTest(DaemonTestCase):
    CONFIG = config(limit=3, shares={"analytics": 1})

    async def test_shares(self):
        with self.assertRaises(errors.InvalidArgumentError):     # over its share: never
            await self.infra.api_quota("analytics", count=2)
        await self.infra.api_quota("analytics")
        with self.assertRaises(errors.RateLimitedError) as cm:
            await self.infra.api_quota("analytics")
        self.assertGreater(cm.exception.retry_after, 0)
        g = await self.infra.api_quota("strategy", count=2)       # the rest of the budget
        self.assertEqual(g.remaining, 0)
        st = await self.infra.status()
        self.assertEqual({c.component: (c.used, c.share) for c in st.claude_components},
                         {"analytics": (1, 1), "strategy": (2, 0)})

    async def test_spend_refuse_and_survive_restarts(self):
        g = await self.infra.api_quota("strategy", count=2)
        self.assertEqual((g.granted, g.remaining, g.limit), (True, 1, 3))
        g = await self.infra.api_quota("strategy")
        self.assertEqual(g.remaining, 0)
        with self.assertRaises(errors.RateLimitedError) as cm:
            await self.infra.api_quota("strategy")
        self.assertGreater(cm.exception.retry_after, 0)
        self.assertLessEqual(cm.exception.retry_after, 3600)
        self.assertEqual(cm.exception.limit, 3)
        st = await self.infra.status()
        self.assertEqual((st.claude_hourly_limit, st.claude_requests_used,
                          st.claude_requests_remaining), (3, 3, 0))
        self.assertGreater(st.claude_next_slot_ms, 0)
        self.assertEqual({c.component: c.used for c in st.claude_components if c.used},
                         {"strategy": 3})
        for sig in (signal.SIGTERM, signal.SIGKILL):
            await self.restart(sig)
            infra = self.client()
            with self.assertRaises(errors.RateLimitedError, msg=sig):
                await infra.api_quota("analytics")
            st = await infra.status()
            self.assertEqual((st.claude_requests_used, st.claude_requests_remaining), (3, 0),
                             sig)


class QuotaWaitTest(DaemonTestCase):
    CONFIG = config(limit=1, window=4)

    async def test_higher_priority_waiter_first(self):
        await self.infra.api_quota("strategy")
        done = []

        async def take(component, priority):
            g = await self.client().api_quota(component, wait=STEP, priority=priority)
            done.append(component)
            return g

        async def waiting(n):
            st = await self.infra.status()
            return st.claude_waiting == n and st.claude_requests_remaining == 0
        low = asyncio.ensure_future(take("low", 0))
        await self.until(lambda: waiting(1), "the first waiter")
        high = asyncio.ensure_future(take("high", 5))
        await self.until(lambda: waiting(2), "the second waiter")
        g_high, g_low = await asyncio.wait_for(asyncio.gather(high, low), STEP * 2)
        self.assertEqual(done, ["high", "low"])
        self.assertTrue(g_high.granted and g_low.granted)

    async def test_a_wait_that_runs_out(self):
        await self.infra.api_quota("strategy")
        with self.assertRaises(errors.RateLimitedError) as cm:
            await self.infra.api_quota("strategy", wait=0.2)
        self.assertGreater(cm.exception.retry_after, 0)
        self.assertEqual((await self.infra.status()).claude_waiting, 0)


class BadInputTest(DaemonTestCase):
    CONFIG = config(limit=3)

    @staticmethod
    def resources(st):
        return (st.gpu_available, list(st.gpus), list(st.gpu_waiters), st.gpu_waiting,
                st.claude_requests_used, st.claude_requests_remaining, st.claude_waiting,
                list(st.claude_components))

    async def test_refused_and_nothing_changed(self):
        await self.infra.api_quota("strategy")
        before = self.resources(await self.infra.status())
        for component in ("", "x" * 200):
            with self.assertRaises(errors.InvalidArgumentError, msg=len(component)):
                await self.infra.acquire_gpu(component)
            with self.assertRaises(errors.InvalidArgumentError, msg=len(component)):
                await self.infra.api_quota(component)
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.acquire_gpu("training", reason="r" * 1000)
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.api_quota("strategy", count=1000)
        with self.assertRaises(errors.NotFoundError):
            await self.infra.release_gpu("no-such-lease")
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.release_gpu("")
        self.assertEqual(self.resources(await self.infra.status()), before)


if __name__ == "__main__":
    unittest.main()
