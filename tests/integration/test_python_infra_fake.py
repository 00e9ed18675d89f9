"""jimbot.Infrastructure, the real client, against a fake coordinator: a
grpc.aio server in this process that serves the Infrastructure service as
jimbotd's contract says (docs: /work brief "What the daemon will do"), with
jimbot.testing.MockInfrastructure behind it. It needs no daemon, so the
client's stream handling is tested where the real daemon cannot easily be
made to misbehave:

* a grant, queue positions (and on_queued), keepalives moving the expiry,
  the expiring warning, release (ReleaseGpu, then the stream ends OK),
  leaving the block by an exception or a cancellation (the stream is
  cancelled: the lease is released);
* expiry: the stream ends DEADLINE_EXCEEDED -> LeaseExpiredError;
* the stream ending UNAVAILABLE "shutting down" with the lease kept: the
  client re-attaches with its lease_id (same lease, device and expiry,
  reattached), also across a restart of the server on the same port; a
  waiter queues again; NOT_FOUND on re-attach -> LeaseLostError; nobody
  answering within reattach_s -> LeaseLostError;
* api_quota: wait_ms sent and the deadline extended past it, granted: false
  -> RateLimitedError with retry_after, INVALID_ARGUMENT mapped; status
  passed through; RESOURCE_EXHAUSTED's retry-after-ms kept.

The test of the real daemon is test_python_infra.py.
"""

import asyncio
import os
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jimbot  # noqa: E402
from jimbot import errors  # noqa: E402
from jimbot.infra.v1 import infrastructure_pb2 as pb  # noqa: E402
from jimbot.infra.v1 import infrastructure_pb2_grpc as pb_grpc  # noqa: E402
from jimbot.testing import MockInfrastructure  # noqa: E402

STEP = 10.0  # seconds any single wait may take before the test fails


class FakeCoordinator(pb_grpc.InfrastructureServicer):
    """The Infrastructure service over a MockInfrastructure, as jimbotd
    streams it: queued, granted, keepalive every keepalive_s, expiring,
    then OK after a release or DEADLINE_EXCEEDED at expiry; a cancelled
    stream releases; detach() ends every stream UNAVAILABLE and keeps the
    leases for a re-attach."""

    def __init__(self, mock: MockInfrastructure, keepalive_s: float = 0.05):
        self.mock = mock
        self.keepalive_s = keepalive_s
        self.streams = {}          # lease id -> the live stream's stop event
        self.stops = set()         # every live stream's stop event
        self.detached = False
        self.requests = []         # every AcquireGpuRequest
        self.quota_deadlines = []  # (wait_ms, the call's time remaining at arrival)
        self.cancelled = 0

    def detach(self):
        """Shutdown: every stream ends UNAVAILABLE, the leases stay held."""
        self.detached = True
        for stop in self.stops:
            stop.set()

    async def AcquireGpu(self, request, context):
        self.requests.append(request)
        self.detached = False
        q = asyncio.Queue()
        if request.lease_id:
            lease = self.mock._leases.get(request.lease_id)
            if lease is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease")
            if request.lease_id in self.streams:
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, "held by a live stream")
            reattached = True
        else:
            try:
                lease = self.mock.start_gpu(request.component, request.priority,
                                            request.duration_seconds or None, request.reason,
                                            request.pid,
                                            on_queued=lambda p: q.put_nowait(("queued", p)))
            except errors.InvalidArgumentError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            reattached = False
        stop = asyncio.Event()
        self.stops.add(stop)
        watchers = [asyncio.ensure_future(self._watch(ev, name, q)) for ev, name in
                    ((lease.granted, "granted"), (lease.expiring, "expiring"),
                     (lease.ended, "ended"), (stop, "stop"))]
        held = False
        try:
            while True:
                try:
                    kind, arg = await asyncio.wait_for(q.get(), self.keepalive_s)
                except asyncio.TimeoutError:
                    if held:
                        yield pb.GpuLeaseEvent(keepalive=pb.GpuKeepalive(
                            expires_ms=lease.expires_ms))
                    continue
                if kind == "queued":
                    yield pb.GpuLeaseEvent(queued=pb.GpuQueued(position=arg))
                elif kind == "granted":
                    held = True
                    self.streams[lease.lease_id] = stop
                    yield pb.GpuLeaseEvent(granted=pb.GpuGrant(
                        lease_id=lease.lease_id, expires_ms=lease.expires_ms, device=lease.device,
                        reattached=reattached))
                elif kind == "expiring":
                    yield pb.GpuLeaseEvent(expiring=pb.GpuExpiring(expires_ms=lease.expires_ms))
                elif kind == "ended":
                    if isinstance(lease.error, errors.LeaseExpiredError):
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "lease expired")
                    return
                elif kind == "stop":
                    if not lease.granted.is_set():
                        await lease.release()     # a waiter leaves the queue
                    lease = None                  # a holder's lease is kept
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.stops.discard(stop)
            for w in watchers:
                w.cancel()
            if lease is not None:
                self.streams.pop(lease.lease_id, None)
                if not lease.ended.is_set():
                    await lease.release()         # the holder went away
            else:
                self.streams = {k: v for k, v in self.streams.items() if v is not stop}

    @staticmethod
    async def _watch(event, name, q):
        await event.wait()
        q.put_nowait((name, None))

    async def ReleaseGpu(self, request, context):
        try:
            return await self.mock.release_gpu(request.lease_id)
        except errors.NotFoundError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except errors.InvalidArgumentError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def AcquireApiQuota(self, request, context):
        self.quota_deadlines.append((request.wait_ms, context.time_remaining()))
        if request.component == "crowded":
            await context.send_initial_metadata(())
            context.set_trailing_metadata((("retry-after-ms", "250"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many waiters")
        try:
            g = await self.mock.api_quota(request.component, request.count,
                                          wait=request.wait_ms / 1000, priority=request.priority)
        except errors.RateLimitedError as e:
            return pb.AcquireApiQuotaResponse(granted=False, remaining=e.remaining,
                                              retry_after_ms=e.retry_after_ms, limit=e.limit)
        except errors.InvalidArgumentError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.AcquireApiQuotaResponse(granted=True, remaining=g.remaining, limit=g.limit)

    async def GetResourceStatus(self, request, context):
        return await self.mock.status()


class FakeTestCase(unittest.IsolatedAsyncioTestCase):
    MOCK = {}

    async def asyncSetUp(self):
        self.mock = MockInfrastructure(**self.MOCK)
        self.fake = FakeCoordinator(self.mock)
        self.port = None
        await self.start_server()
        self.infra = jimbot.Infrastructure(f"127.0.0.1:{self.port}", reattach_s=5.0)

    async def start_server(self):
        self.server = grpc.aio.server()
        pb_grpc.add_InfrastructureServicer_to_server(self.fake, self.server)
        port = self.server.add_insecure_port(f"127.0.0.1:{self.port or 0}")
        self.assertTrue(port)
        self.port = port
        await self.server.start()

    async def asyncTearDown(self):
        await self.infra.close()
        await self.server.stop(None)
        await self.mock.close()

    async def until(self, cond, what):
        """Wait for cond() with a deadline (the server runs on this loop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        while not cond():
            if loop.time() > deadline:
                self.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)


class LeaseTest(FakeTestCase):
    MOCK = {"max_allocation_seconds": 60, "expiry_warning_seconds": 1}

    async def test_grant_keepalive_release(self):
        async with self.infra.gpu("training", priority=2, seconds=30, reason="r", pid=77) as lease:
            self.assertEqual(lease.device, 0)
            self.assertEqual(lease.lease_id, self.mock.holders()[0].lease_id)
            self.assertFalse(lease.reattached)
            first = lease.expires_ms
            self.assertGreater(first, 0)
            self.assertAlmostEqual(lease.expires_at, first / 1000)
            req = self.fake.requests[0]
            self.assertEqual((req.component, req.priority, req.duration_seconds, req.reason,
                              req.pid, req.lease_id), ("training", 2, 30, "r", 77, ""))
        self.assertTrue(lease.ended.is_set())
        self.assertIsNone(lease.error)
        self.assertIsNotNone(lease.release_info)       # ReleaseGpu answered
        self.assertEqual(self.mock.holders(), [None])
        await self.until(lambda: not self.fake.streams, "the stream's end")

    async def test_default_pid_is_this_process(self):
        lease = await self.infra.acquire_gpu("training")
        self.assertEqual(self.fake.requests[0].pid, os.getpid())
        self.assertEqual(self.fake.requests[0].duration_seconds, 0)
        await lease.release()

    async def test_queue_positions_then_grant(self):
        holder = await self.infra.acquire_gpu("analytics")
        seen = []

        async def on_queued(position):
            seen.append(position)

        waiter = self.infra.start_gpu("x", on_queued=on_queued)
        await self.until(lambda: waiter.position == 1, "position 1")
        ahead = self.infra.start_gpu("training")
        await self.until(lambda: waiter.position == 2, "position 2")
        await holder.release()
        await asyncio.wait_for(ahead.wait_granted(), STEP)
        self.assertFalse(waiter.granted.is_set())
        await ahead.release()
        await asyncio.wait_for(waiter.wait_granted(), STEP)
        self.assertEqual(seen, [1, 2, 1])
        await waiter.release()

    async def test_an_exception_in_the_block_releases(self):
        with self.assertRaises(ZeroDivisionError):
            async with self.infra.gpu("training") as lease:
                1 / 0
        self.assertTrue(lease.ended.is_set())
        self.assertEqual(self.mock.holders(), [None])

    async def test_cancelling_the_holder_releases(self):
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
        await self.until(lambda: self.mock.holders() == [None], "the release")

    async def test_cancelling_a_waiter_withdraws_it(self):
        holder = await self.infra.acquire_gpu("training")
        task = asyncio.ensure_future(self.infra.acquire_gpu("x"))
        await self.until(lambda: len(self.mock.waiters()) == 1, "the waiter")
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await self.until(lambda: not self.mock.waiters(), "the waiter leaving")
        with self.assertRaises(errors.DeadlineExceededError):
            await self.infra.acquire_gpu("y", timeout=0.2)
        await self.until(lambda: not self.mock.waiters(), "the timed-out waiter leaving")
        await holder.release()

    async def test_released_by_someone_else(self):
        lease = await self.infra.acquire_gpu("training")
        await self.infra.release_gpu(lease.lease_id)
        await asyncio.wait_for(lease.ended.wait(), STEP)
        self.assertIsInstance(lease.error, errors.LeaseLostError)
        with self.assertRaises(errors.NotFoundError):
            await self.infra.release_gpu(lease.lease_id)
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.release_gpu("")
        await lease.release()

    async def test_bad_request(self):
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.acquire_gpu("")
        with self.assertRaises(errors.InvalidArgumentError):   # refused by the client
            await self.infra.acquire_gpu("a", priority=1 << 40)


class ExpiryTest(FakeTestCase):
    MOCK = {"max_allocation_seconds": 1.0, "expiry_warning_seconds": 0.5}

    async def test_expiring_then_expired(self):
        async with self.infra.gpu("training") as lease:
            await asyncio.wait_for(lease.expiring.wait(), STEP)
            self.assertFalse(lease.ended.is_set())
            await asyncio.wait_for(lease.ended.wait(), STEP)
            self.assertIsInstance(lease.error, errors.LeaseExpiredError)
            with self.assertRaises(errors.LeaseExpiredError):
                lease.check()
        self.assertIsInstance(lease.error, errors.LeaseExpiredError)


class ReattachTest(FakeTestCase):
    MOCK = {"max_allocation_seconds": 60}

    async def test_reattach_after_unavailable(self):
        lease = await self.infra.acquire_gpu("training")
        lease_id, expires, device = lease.lease_id, lease.expires_ms, lease.device
        self.fake.detach()
        await self.until(lambda: lease.reattaches == 1, "the re-attach")
        self.assertEqual((lease.lease_id, lease.expires_ms, lease.device),
                         (lease_id, expires, device))
        self.assertTrue(lease.reattached)
        self.assertFalse(lease.ended.is_set())
        self.assertEqual(self.fake.requests[-1].lease_id, lease_id)
        self.assertEqual(self.fake.requests[-1].component, "training")
        await lease.release()
        self.assertIsNone(lease.error)
        self.assertEqual(self.mock.holders(), [None])

    async def test_reattach_across_a_server_restart(self):
        lease = await self.infra.acquire_gpu("training")
        self.fake.detach()
        await self.server.stop(None)
        await asyncio.sleep(0.3)             # the client retries against a closed port meanwhile
        await self.start_server()
        await self.until(lambda: lease.reattaches == 1, "the re-attach")
        self.assertFalse(lease.ended.is_set())
        self.assertEqual(self.mock.holders(), [lease_in_mock(self.mock, lease)])
        await lease.release()
        self.assertEqual(self.mock.holders(), [None])

    async def test_a_waiter_queues_again(self):
        holder = await self.infra.acquire_gpu("analytics")
        waiter = self.infra.start_gpu("x")
        await self.until(lambda: waiter.position == 1, "the waiter")
        n = len(self.fake.requests)
        self.fake.detach()
        await self.until(lambda: len(self.fake.requests) >= n + 2, "both back")
        await self.until(lambda: len(self.mock.waiters()) == 1, "the waiter queued again")
        await holder.release()
        await asyncio.wait_for(waiter.wait_granted(), STEP)
        mine = [r for r in self.fake.requests if r.component == "x"]
        self.assertEqual([r.lease_id for r in mine], ["", ""])   # queued again, no lease id
        await waiter.release()

    async def test_lost_when_the_lease_is_gone(self):
        lease = await self.infra.acquire_gpu("training")
        mock_lease = lease_in_mock(self.mock, lease)
        self.fake.detach()
        # The daemon forgot the lease while the stream was broken.
        self.mock._end(mock_lease)
        await asyncio.wait_for(lease.ended.wait(), STEP)
        self.assertIsInstance(lease.error, errors.LeaseLostError)
        await lease.release()

    async def test_lost_when_nobody_answers(self):
        self.infra = jimbot.Infrastructure(f"127.0.0.1:{self.port}", reattach_s=0.5)
        lease = await self.infra.acquire_gpu("training")
        self.fake.detach()
        await self.server.stop(None)
        await asyncio.wait_for(lease.ended.wait(), STEP)
        self.assertIsInstance(lease.error, errors.LeaseLostError)
        await self.start_server()             # for tearDown

    async def test_no_reattach_when_turned_off(self):
        self.infra = jimbot.Infrastructure(f"127.0.0.1:{self.port}", reattach_s=0)
        lease = await self.infra.acquire_gpu("training")
        self.fake.detach()
        await asyncio.wait_for(lease.ended.wait(), STEP)
        self.assertIsInstance(lease.error, errors.UnavailableError)

    async def test_first_call_fails_fast_without_a_daemon(self):
        await self.server.stop(None)
        with self.assertRaises(errors.UnavailableError):
            await self.infra.acquire_gpu("training")
        await self.start_server()


def lease_in_mock(mock, lease):
    return mock._leases[lease.lease_id]


class QuotaTest(FakeTestCase):
    MOCK = {"hourly_limit": 2, "window_seconds": 0.5}

    async def test_spend_refuse_wait(self):
        g = await self.infra.api_quota("strategy")
        self.assertEqual((g.granted, g.remaining, g.limit), (True, 1, 2))
        await self.infra.api_quota("strategy")
        with self.assertRaises(errors.RateLimitedError) as cm:
            await self.infra.api_quota("strategy")
        self.assertGreater(cm.exception.retry_after, 0)
        self.assertEqual(cm.exception.retry_after, cm.exception.retry_after_ms / 1000)
        self.assertEqual(cm.exception.limit, 2)
        # Waiting: the deadline covers the wait (timeout_s 10 + 5 s).
        g = await asyncio.wait_for(self.infra.api_quota("strategy", wait=5, priority=1), STEP)
        self.assertTrue(g.granted)
        wait_ms, remaining = self.fake.quota_deadlines[-1]
        self.assertEqual(wait_ms, 5000)
        self.assertGreater(remaining, 5.0)

    async def test_errors(self):
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.api_quota("")
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.api_quota("strategy", count=3)
        with self.assertRaises(errors.InvalidArgumentError):   # refused by the client
            await self.infra.api_quota("strategy", count=1 << 33)
        with self.assertRaises(errors.BackpressureError) as cm:
            await self.infra.api_quota("crowded")
        self.assertEqual(cm.exception.retry_after_ms, 250)

    async def test_status(self):
        await self.infra.api_quota("strategy")
        st = await self.infra.status()
        self.assertIsInstance(st, pb.ResourceStatus)
        self.assertEqual((st.claude_hourly_limit, st.claude_requests_used), (2, 1))
        self.assertTrue(st.gpu_available)


if __name__ == "__main__":
    unittest.main()
