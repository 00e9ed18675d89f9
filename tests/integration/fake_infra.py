"""A scripted Infrastructure service in the test's own process, for testing the clients' side.

FakeInfra serves AcquireGpu, ReleaseGpu, AcquireApiQuota and GetResourceStatus as the contract in
../shared/DESIGN.md and proto/jimbot/infra/v1/infrastructure.proto says (one device, first come
first served, queue positions, keepalives, an expiring warning, DEADLINE_EXCEEDED "lease expired",
UNAVAILABLE "shutting down" with the lease kept for a re-attach by lease id), small enough to read
at a glance. It lets the tests of jimbotctl and of the C client drive what is slow or awkward to
provoke in the real daemon (an expiry, a daemon shutdown in the middle of a lease) and check what
the client sent (every AcquireGpuRequest is kept in .requests). The real coordinator is tested by
test_cli_gpu.py and the daemon's own tests.
"""
import threading
import time
import uuid
from concurrent import futures

import grpc

from jimbot.infra.v1 import infrastructure_pb2 as pb
from jimbot.infra.v1 import infrastructure_pb2_grpc as pbg


def now_ms():
    return int(time.time() * 1000)


class FakeInfra(pbg.InfrastructureServicer):
    def __init__(self, keepalive_s=0.2, warning_s=1.0, limit=5, max_seconds=300):
        self.cond = threading.Condition()
        self.keepalive_s = keepalive_s
        self.warning_s = warning_s
        self.max_seconds = max_seconds
        self.lease = None  # dict: id, component, pid, reason, granted, expires, attached
        self.waiters = []  # [(token, AcquireGpuRequest)], in order
        self.requests = []  # every AcquireGpuRequest, in arrival order
        self.epoch = 0  # break_streams() bumps it: holders' streams end UNAVAILABLE
        self.limit = limit
        self.used = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        pbg.add_InfrastructureServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def close(self):
        self.server.stop(0)

    # ---- what tests call -------------------------------------------------------------------

    def break_streams(self):
        """Ends the holder's stream UNAVAILABLE "shutting down", keeping its lease to re-attach."""
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()

    def hold(self, component="someone-else"):
        """Takes the device without a stream (as a restored lease would); returns the lease id."""
        with self.cond:
            self.lease = self._new_lease(pb.AcquireGpuRequest(component=component))
            self.lease["attached"] = False
            return self.lease["id"]

    def wait_until(self, predicate, timeout=30.0):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout=timeout):
                raise AssertionError("the fake never saw the expected state")

    # ---- GPU leases ------------------------------------------------------------------------

    def _new_lease(self, req):
        seconds = min(req.duration_seconds or self.max_seconds, self.max_seconds)
        return {"id": str(uuid.uuid4()), "component": req.component, "pid": req.pid,
                "reason": req.reason, "granted": now_ms(), "expires": now_ms() + seconds * 1000,
                "attached": True}

    def _grant_event(self, lease, reattached=False):
        return pb.GpuLeaseEvent(granted=pb.GpuGrant(
            lease_id=lease["id"], expires_ms=lease["expires"], device=0, reattached=reattached))

    def AcquireGpu(self, request, context):
        context.add_callback(self._wake)
        with self.cond:
            self.requests.append(request)
            self.cond.notify_all()
        if not request.component:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty component")
        if request.lease_id:
            with self.cond:
                lease = self.lease
                if lease is None or lease["id"] != request.lease_id:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no lease '{request.lease_id}'")
                if lease["attached"]:
                    context.abort(grpc.StatusCode.ALREADY_EXISTS, "held by a live stream")
                lease["attached"] = True
                lease["epoch"] = self.epoch
            yield self._grant_event(lease, reattached=True)
        else:
            lease = yield from self._queue(request, context)
            if lease is None:
                return
            yield self._grant_event(lease)
        yield from self._hold(lease, context)

    def _wake(self):
        with self.cond:
            self.cond.notify_all()

    def _queue(self, request, context):
        token = object()
        with self.cond:
            self.waiters.append((token, request))
        told = None
        try:
            while True:
                with self.cond:
                    if not context.is_active():
                        return None
                    if self.lease is None and self.waiters[0][0] is token:
                        self.waiters.pop(0)
                        self.lease = self._new_lease(request)
                        self.lease["epoch"] = self.epoch
                        self.cond.notify_all()
                        return self.lease
                    pos = [t for t, _ in self.waiters].index(token) + 1
                    if pos == told:
                        self.cond.wait(timeout=1.0)
                        continue
                told = pos
                yield pb.GpuLeaseEvent(queued=pb.GpuQueued(position=pos))
        finally:
            with self.cond:
                self.waiters = [(t, r) for t, r in self.waiters if t is not token]
                self.cond.notify_all()

    def _hold(self, lease, context):
        # The epoch of the grant (taken then: the client may act on the grant
        # before this generator runs again).
        epoch = lease["epoch"]
        warned = False
        next_ka = time.time() + self.keepalive_s
        keep = False
        try:
            while True:
                with self.cond:
                    if self.lease is not lease:
                        return  # released: the stream ends OK
                    if not context.is_active():
                        return
                    if self.epoch != epoch:
                        keep = True
                        lease["attached"] = False
                        context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
                    t = time.time()
                    if t * 1000 >= lease["expires"]:
                        self.lease = None
                        self.cond.notify_all()
                        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "lease expired")
                    warn_at = lease["expires"] / 1000 - self.warning_s
                    if not warned and t >= warn_at:
                        warned = True
                        ev = pb.GpuLeaseEvent(expiring=pb.GpuExpiring(expires_ms=lease["expires"]))
                    elif t >= next_ka:
                        next_ka = t + self.keepalive_s
                        ev = pb.GpuLeaseEvent(keepalive=pb.GpuKeepalive(expires_ms=lease["expires"]))
                    else:
                        due = min(next_ka, lease["expires"] / 1000, warn_at if not warned else 1e18)
                        self.cond.wait(timeout=max(0.01, due - t))
                        continue
                yield ev
        finally:
            with self.cond:
                if not keep and self.lease is lease:
                    self.lease = None  # the holder went away: released at once
                    self.cond.notify_all()

    def ReleaseGpu(self, request, context):
        if not request.lease_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty lease id")
        with self.cond:
            if self.lease is None or self.lease["id"] != request.lease_id:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no lease '{request.lease_id}'")
            held = now_ms() - self.lease["granted"]
            self.lease = None
            self.cond.notify_all()
        return pb.ReleaseGpuResponse(held_ms=held, device=0)

    # ---- the budget and the status -------------------------------------------------------

    def AcquireApiQuota(self, request, context):
        if not request.component:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty component")
        count = request.count or 1
        if count > self.limit:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"count {count} over the limit")
        with self.cond:
            # With wait_ms, wait that long for budget (which nothing frees here).
            self.cond.wait_for(lambda: self.used + count <= self.limit,
                               timeout=request.wait_ms / 1000)
            if self.used + count <= self.limit:
                self.used += count
                return pb.AcquireApiQuotaResponse(granted=True, remaining=self.limit - self.used,
                                                  limit=self.limit)
            return pb.AcquireApiQuotaResponse(granted=False, remaining=self.limit - self.used,
                                              retry_after_ms=1234, limit=self.limit)

    def GetResourceStatus(self, request, context):
        with self.cond:
            lease = self.lease
            dev = pb.GpuDeviceStatus(index=0, available=lease is None)
            if lease is not None:
                dev.holder = lease["component"]
                dev.lease_id = lease["id"]
                dev.expires_ms = lease["expires"]
                dev.granted_ms = lease["granted"]
                dev.holder_pid = lease["pid"]
                dev.reason = lease["reason"]
                dev.restored = not lease["attached"]
            waiters = [pb.GpuWaiter(position=i + 1, component=r.component, priority=r.priority,
                                    since_ms=now_ms(), reason=r.reason)
                       for i, (_, r) in enumerate(self.waiters)]
            return pb.ResourceStatus(
                gpu_available=lease is None, gpus=[dev], gpu_waiters=waiters,
                gpu_waiting=len(waiters), gpu_source="config",
                claude_hourly_limit=self.limit, claude_requests_used=self.used,
                claude_requests_remaining=self.limit - self.used, claude_window_seconds=3600,
                claude_components=[pb.ApiQuotaComponent(component="jimbotctl", used=self.used)])
