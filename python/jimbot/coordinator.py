"""An asyncio client for jimbotd's resource coordinator (``jimbot.infra.v1.Infrastructure``).

::

    import jimbot

    async with jimbot.Infrastructure("127.0.0.1:50051") as infra:
        async with infra.gpu("training", reason="epoch 12") as lease:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(lease.device)
            await train(until=lease.expiring)        # stop early when warned
        try:
            await infra.api_quota("strategy")          # one request of the budget
        except jimbot.errors.RateLimitedError as e:
            await asyncio.sleep(e.retry_after)

Design notes:

* One ``grpc.aio`` channel per :class:`Infrastructure`, opened on first use,
  with the keepalive options of :class:`jimbot.EventBus` (a vanished daemon
  is noticed within about ``keepalive_ms + keepalive_timeout_ms``) and a
  short gRPC reconnect backoff, so that a restarted daemon is reached again
  within a lease's re-attach window.
* A :class:`GpuLease` is one ``AcquireGpu`` stream read by a task of its
  own: ``queued`` updates ``position``, ``granted`` fills ``device``,
  ``lease_id`` and the expiry, ``keepalive`` moves the expiry, ``expiring``
  sets the ``expiring`` event. The lease is held for as long as the stream
  is open: the daemon releases it at once when the stream is cancelled or
  the process dies. :meth:`GpuLease.release` sends ``ReleaseGpu`` and waits
  for the stream to end (OK), then cancels it in any case.
* When the stream ends UNAVAILABLE (the daemon restarting: it keeps the
  lease for its re-attach grace, 15 s by default) the task calls
  ``AcquireGpu`` again with the ``lease_id``, with backoff, for at most
  ``reattach_s``; a waiter that had no grant yet queues again. If that
  fails the lease ends with :class:`~jimbot.errors.LeaseLostError`. Expiry
  ends it with :class:`~jimbot.errors.LeaseExpiredError`. The code in the
  ``async with`` block is never interrupted: it can watch ``lease.ended`` or
  call ``lease.check()``.
* :meth:`Infrastructure.api_quota` maps ``granted: false`` to
  :class:`~jimbot.errors.RateLimitedError`; the call's deadline is
  ``timeout_s`` plus the ``wait`` asked for. It is never retried: a request
  cut off in flight may or may not have been spent.
* The shared Redis (:mod:`jimbot.redis_access`): :meth:`Infrastructure.redis_access`
  is one ``GetRedisAccess``; :meth:`Infrastructure.redis` builds a
  ``redis.asyncio.Redis`` from its answer. The Redis connections are the
  caller's, not the channel's: :meth:`Infrastructure.close` leaves them open.
* The request queues (:mod:`jimbot.queues`): :meth:`Infrastructure.submit`
  is one ``SubmitRequest`` whose gRPC deadline is its ``timeout`` plus 1 s
  (the daemon answers DEADLINE_EXCEEDED itself at ``timeout``); it is never
  retried, and cancelling it withdraws the request. :meth:`Infrastructure.take`
  is one ``TakeRequests`` stream (a :class:`QueueWorker`): the daemon sends
  its initial metadata once the worker is registered, which is what
  :meth:`QueueWorker.ready` waits for; answers are ``Respond`` calls; the
  stream is re-opened after UNAVAILABLE (a daemon restarting) with backoff.

Everything here runs on the caller's event loop; nothing is thread-safe.
"""

import asyncio
import inspect
import logging
import os
import time
from typing import Callable, Optional, Sequence

import grpc

from .errors import (ClosedError, DeadlineExceededError, InvalidArgumentError, JimbotError,
                     LeaseExpiredError, LeaseLostError, RateLimitedError, UnavailableError,
                     from_rpc_error)
from .event_bus import (DEFAULT_ADDR, DEFAULT_KEEPALIVE_MS, DEFAULT_KEEPALIVE_TIMEOUT_MS,
                        _Backoff, keepalive_options, merge_channel_options, open_channel)
from .infra.v1 import infrastructure_pb2 as pb
from .infra.v1 import infrastructure_pb2_grpc as pb_grpc
from .queues import QueueRequest, QueueResponse, make_request, take_request
from .redis_access import RedisAccess, RedisApi

__all__ = ["Infrastructure", "GpuLease", "QuotaGrant", "GpuApi", "QueueApi", "QueueWorker",
           "DEFAULT_REATTACH_S", "SUBMIT_DEADLINE_SLACK_S"]

log = logging.getLogger("jimbot.coordinator")

#: How long a lease whose stream broke tries to re-attach (the daemon keeps
#: such a lease for resource_coordinator.gpu.reattach_grace_seconds, 15).
DEFAULT_REATTACH_S = 15.0
#: gRPC's own reconnect backoff, capped so that a restarted daemon is found
#: again well within the re-attach window (gRPC's default cap is 120 s).
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000)]
#: What a submit's gRPC deadline adds to its timeout, so that the daemon's own
#: DEADLINE_EXCEEDED (at the timeout) comes first.
SUBMIT_DEADLINE_SLACK_S = 1.0
#: Initial metadata key by which jimbotd says that a worker is registered.
WORKER_KEY = "jimbot-worker"
_UINT32_MAX = (1 << 32) - 1
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _uint32(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT32_MAX:
        raise InvalidArgumentError(f"{name} must be an integer from 0 to {_UINT32_MAX}, "
                                   f"not {value!r}")
    return value


def _int32(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not _INT32[0] <= value <= _INT32[1]:
        raise InvalidArgumentError(f"{name} must be a 32-bit integer, not {value!r}")
    return value


def gpu_request(component: str, *, priority: int = 0, seconds: Optional[float] = None,
                reason: str = "", pid: Optional[int] = None) -> pb.AcquireGpuRequest:
    """The ``AcquireGpuRequest`` for these arguments (``seconds`` None: the
    daemon's cap; ``pid`` None: this process). Raises
    :class:`~jimbot.errors.InvalidArgumentError` for values the message
    cannot carry; the daemon checks the rest."""
    if not isinstance(component, str) or not isinstance(reason, str):
        raise InvalidArgumentError("component and reason must be strings")
    duration = 0 if seconds is None else _uint32("seconds", int(-(-seconds // 1)))
    return pb.AcquireGpuRequest(component=component, priority=_int32("priority", priority),
                                duration_seconds=duration, reason=reason,
                                pid=_uint32("pid", os.getpid() if pid is None else pid))


class QuotaGrant:
    """What a granted :meth:`Infrastructure.api_quota` returns: ``granted``
    (always True), ``remaining`` (left in the window after this grant) and
    ``limit`` (the hourly limit in force)."""

    __slots__ = ("granted", "remaining", "limit")

    def __init__(self, remaining: int, limit: int):
        self.granted = True
        self.remaining = remaining
        self.limit = limit

    def __repr__(self) -> str:
        return f"QuotaGrant(remaining={self.remaining}, limit={self.limit})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, QuotaGrant)
                and (other.remaining, other.limit) == (self.remaining, self.limit))


def quota_answer(resp: pb.AcquireApiQuotaResponse, component: str, count: int) -> QuotaGrant:
    """A :class:`QuotaGrant`, or raises :class:`~jimbot.errors.RateLimitedError`
    for an answer that did not grant."""
    if resp.granted:
        return QuotaGrant(resp.remaining, resp.limit)
    raise RateLimitedError(
        f"no budget for {count} request(s) of '{component}' ({resp.remaining} of {resp.limit} "
        f"left); retry after {resp.retry_after_ms} ms", retry_after_ms=resp.retry_after_ms,
        remaining=resp.remaining, limit=resp.limit)


class GpuLease:
    """A GPU lease, from the request until its end.

    Made by :meth:`Infrastructure.gpu` (an async context manager that
    releases at exit) or :meth:`Infrastructure.acquire_gpu` (then call
    :meth:`release`). Attributes:

    * ``component``, ``request``: what was asked;
    * ``position``: the last queue position the daemon sent (1 = next), None
      when it never queued;
    * ``device`` (int), ``device_uuid``, ``lease_id``, ``expires_ms`` and
      ``expires_at`` (seconds since the epoch, a float), ``reattached`` (the
      last grant re-attached after a broken stream), ``reattaches`` (how
      many times): set by the grant;
    * ``granted``, ``expiring``, ``ended``: :class:`asyncio.Event`;
      ``expiring`` is set when the daemon warns that the end is near;
    * ``error``: why the lease ended before its release
      (:class:`~jimbot.errors.LeaseExpiredError`,
      :class:`~jimbot.errors.LeaseLostError`...), None otherwise; ``lost``
      is ``error is not None``;
    * ``release_info``: the daemon's ``ReleaseGpuResponse`` (``held_ms``,
      ``device``, ``memory_held_bytes``) after :meth:`release`, else None.
    """

    def __init__(self, request: pb.AcquireGpuRequest,
                 on_queued: Optional[Callable[[int], object]] = None):
        self.request = request
        self.component = request.component
        self.position: Optional[int] = None
        self.device: Optional[int] = None
        self.device_uuid = ""
        self.lease_id = ""
        self.expires_ms = 0
        self.reattached = False
        self.reattaches = 0
        self.granted = asyncio.Event()
        self.expiring = asyncio.Event()
        self.ended = asyncio.Event()
        self.error: Optional[BaseException] = None
        self.release_info: Optional[pb.ReleaseGpuResponse] = None
        self._on_queued = on_queued
        self._grant_waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        self._releasing = False

    expires_at = property(lambda self: self.expires_ms / 1000.0 if self.expires_ms else None,
                          doc="When the lease ends, in seconds since the epoch (None before "
                              "the grant).")
    lost = property(lambda self: self.error is not None,
                    doc="True when the lease ended before its release.")

    def remaining(self) -> Optional[float]:
        """Seconds until the lease's end by this machine's clock (None before
        the grant)."""
        return None if not self.expires_ms else max(0.0, self.expires_at - time.time())

    def check(self) -> None:
        """Raise the lease's ``error`` when it ended before its release."""
        if self.error is not None:
            raise self.error

    # -- what the daemon (or the mock) tells ----------------------------------------------------

    def _queued(self, position: int):
        """Record a queue position; what ``on_queued`` returned (an
        awaitable for a coroutine function, for the caller to await)."""
        self.position = position
        if self._on_queued is not None:
            return self._on_queued(position)
        return None

    def _grant(self, lease_id: str, device: int, device_uuid: str, expires_ms: int,
               reattached: bool) -> None:
        if self.lease_id and reattached:
            self.reattaches += 1
        self.lease_id, self.device, self.device_uuid = lease_id, device, device_uuid
        self.expires_ms, self.reattached = expires_ms, reattached
        self.granted.set()
        if not self._grant_waiter.done():
            self._grant_waiter.set_result(self)

    def _expiring(self, expires_ms: int) -> None:
        if expires_ms:
            self.expires_ms = expires_ms
        self.expiring.set()

    def _finish(self, error: Optional[BaseException]) -> None:
        """The lease (or the wait for it) is over; ``error`` says why when
        it ended before its release."""
        if self.ended.is_set():
            return
        if error is not None and not self._releasing:
            self.error = error
        self.ended.set()
        if not self._grant_waiter.done():
            self._grant_waiter.set_exception(
                error or ClosedError(f"the GPU request of '{self.component}' ended before "
                                     "a grant"))
            self._grant_waiter.exception()  # retrieved: no "never retrieved" warning

    async def wait_granted(self, timeout: Optional[float] = None) -> "GpuLease":
        """Wait for the grant; raises what ended the request before it, or
        :class:`~jimbot.errors.DeadlineExceededError` after ``timeout``
        seconds (the request stays queued then)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._grant_waiter), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                f"no GPU for '{self.component}' within {timeout:g}s") from None

    # -- the holder's side ----------------------------------------------------------------------

    async def release(self) -> Optional[pb.ReleaseGpuResponse]:
        """End the lease (or withdraw the request while it waits); return
        the daemon's ``ReleaseGpuResponse`` when it answered one.
        Idempotent. Never raises for a lease that ended meanwhile."""
        raise NotImplementedError

    async def __aenter__(self) -> "GpuLease":
        try:
            return await self.wait_granted()
        except BaseException:
            await self.release()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.release()

    def __repr__(self) -> str:
        state = ("ended" if self.ended.is_set() else "held" if self.granted.is_set()
                 else "waiting")
        return (f"<GpuLease {self.component} {state} lease_id={self.lease_id!r} "
                f"device={self.device} position={self.position}>")


class _StreamLease(GpuLease):
    """A lease backed by one AcquireGpu stream of an :class:`Infrastructure`."""

    def __init__(self, infra: "Infrastructure", request: pb.AcquireGpuRequest, on_queued,
                 reattach_s: float):
        super().__init__(request, on_queued)
        self._infra = infra
        self._reattach_s = reattach_s
        self._call = None
        self._heard = False          # the daemon answered this request at least once
        self._attempt_heard = False  # ... on the current stream
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _attempt_request(self) -> pb.AcquireGpuRequest:
        req = pb.AcquireGpuRequest()
        req.CopyFrom(self.request)
        if self.lease_id:
            req.lease_id = self.lease_id
        return req

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = _Backoff(0.05, 1.0)
        outage_since = None   # loop time of the break being repaired, if any
        try:
            while True:
                self._attempt_heard = False
                error, retry = await self._read_stream(outage_since)
                if not retry:
                    self._finish(error)
                    return
                if self._attempt_heard or outage_since is None:
                    outage_since = loop.time()    # a new break
                    backoff.reset()
                wait = backoff.next()
                if loop.time() + wait >= outage_since + self._reattach_s:
                    self._finish(self._gave_up(error))
                    return
                log.info("GPU lease %s of '%s': %s; re-attaching in %.2fs", self.lease_id or "-",
                         self.component, error, wait)
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            self._finish(None if self._releasing else ClosedError("the lease was cancelled"))
            raise
        except Exception as e:  # noqa: BLE001: on_queued failed; the acquirer hears of it
            self._finish(e)
        finally:
            if self._call is not None:
                self._call.cancel()
                self._call = None
            self._infra._leases.discard(self)

    def _gave_up(self, error: BaseException) -> BaseException:
        if not self.granted.is_set():
            return error
        return LeaseLostError(f"GPU lease {self.lease_id} of '{self.component}' could not be "
                              f"re-attached within {self._reattach_s:g}s: {error}")

    async def _read_stream(self, outage_since):
        """One AcquireGpu stream until it ends: (error or None, retry?)."""
        loop = asyncio.get_running_loop()
        reattaching = outage_since is not None
        self._call = call = self._infra._stub_or_raise().AcquireGpu(
            self._attempt_request(), wait_for_ready=reattaching)
        try:
            while True:
                if outage_since is not None:
                    left = outage_since + self._reattach_s - loop.time()
                    try:
                        ev = await asyncio.wait_for(call.read(), max(left, 0.001))
                    except asyncio.TimeoutError:
                        return self._gave_up(UnavailableError(
                            f"jimbotd at {self._infra.addr} did not answer")), False
                else:
                    ev = await call.read()
                if ev is grpc.aio.EOF:
                    # Ends OK after a ReleaseGpu of this lease (ours or another's).
                    if self._releasing or not self.granted.is_set():
                        return None, False
                    return LeaseLostError(f"GPU lease {self.lease_id} was released by "
                                          "someone else"), False
                outage_since = None
                self._attempt_heard = self._heard = True
                await self._on_event(ev)
        except grpc.aio.AioRpcError as e:
            return self._classify(e, reattaching)
        finally:
            call.cancel()
            self._call = None

    def _classify(self, e: grpc.aio.AioRpcError, reattaching: bool):
        code = e.code()
        if code == grpc.StatusCode.CANCELLED and self._releasing:
            return None, False
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.granted.is_set():
            return LeaseExpiredError(f"GPU lease {self.lease_id} of '{self.component}' "
                                     f"expired ({e.details()})"), False
        if self._releasing or self._infra._closed or self._reattach_s <= 0:
            return from_rpc_error(e), False
        if code == grpc.StatusCode.UNAVAILABLE and (self._heard or reattaching):
            return from_rpc_error(e), True
        if code == grpc.StatusCode.ALREADY_EXISTS and reattaching:
            # The daemon has not yet noticed that the old stream broke.
            return from_rpc_error(e), True
        if code == grpc.StatusCode.NOT_FOUND and reattaching and self.granted.is_set():
            return LeaseLostError(f"GPU lease {self.lease_id} of '{self.component}' ended "
                                  f"while the stream was broken ({e.details()})"), False
        return from_rpc_error(e), False

    async def _on_event(self, ev: pb.GpuLeaseEvent) -> None:
        kind = ev.WhichOneof("event")
        if kind == "queued":
            result = self._queued(ev.queued.position)
            if inspect.isawaitable(result):
                await result
        elif kind == "granted":
            g = ev.granted
            self._grant(g.lease_id, g.device, g.device_uuid, g.expires_ms, g.reattached)
        elif kind == "keepalive":
            if ev.keepalive.expires_ms:
                self.expires_ms = ev.keepalive.expires_ms
        elif kind == "expiring":
            self._expiring(ev.expiring.expires_ms)

    async def release(self) -> Optional[pb.ReleaseGpuResponse]:
        if self._releasing or self.ended.is_set():
            if not self._task.done():
                await asyncio.wait({self._task})
            return self.release_info
        self._releasing = True
        try:
            if self.granted.is_set() and self.lease_id:
                try:
                    self.release_info = await self._infra.release_gpu(self.lease_id)
                except JimbotError as e:
                    # NOT_FOUND: it ended meanwhile. Otherwise closing the stream
                    # below releases it (or the daemon's grace ends it).
                    log.info("ReleaseGpu %s: %s", self.lease_id, e)
                else:
                    try:  # the daemon ends the stream OK after the release
                        await asyncio.wait_for(asyncio.shield(self.ended.wait()),
                                               self._infra._timeout_s)
                    except asyncio.TimeoutError:
                        pass
        finally:
            if not self._task.done():
                self._task.cancel()
            self._finish(None)
        if not self._task.done():
            await asyncio.wait({self._task})
        return self.release_info


class _GpuContext:
    """``async with infra.gpu(...) as lease``: acquire at entry, release at exit."""

    def __init__(self, acquire):
        self._acquire = acquire
        self._lease: Optional[GpuLease] = None

    async def __aenter__(self) -> GpuLease:
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(self, *exc) -> None:
        if self._lease is not None:
            await self._lease.release()

    def __await__(self):
        return self._acquire().__await__()


class GpuApi:
    """``gpu()`` and ``acquire_gpu()`` on top of a ``start_gpu()`` (shared by
    :class:`Infrastructure` and :class:`jimbot.testing.MockInfrastructure`)."""

    def gpu(self, component: str, priority: int = 0, seconds: Optional[float] = None,
            reason: str = "", pid: Optional[int] = None, *,
            on_queued: Optional[Callable[[int], object]] = None,
            timeout: Optional[float] = None) -> _GpuContext:
        """``async with infra.gpu(...) as lease``: wait for a device, hold
        it for the block, release it at exit (also on an exception or a
        cancellation). Arguments as :meth:`acquire_gpu`."""
        return _GpuContext(lambda: self.acquire_gpu(component, priority, seconds, reason, pid,
                                                    on_queued=on_queued, timeout=timeout))

    async def acquire_gpu(self, component: str, priority: int = 0,
                          seconds: Optional[float] = None, reason: str = "",
                          pid: Optional[int] = None, *,
                          on_queued: Optional[Callable[[int], object]] = None,
                          timeout: Optional[float] = None) -> GpuLease:
        """Wait for a GPU device; return the granted :class:`GpuLease`
        (release it with ``await lease.release()``).

        ``component`` orders the request (the daemon's
        ``gpu.priority_components`` first, in that list's order), then
        ``priority`` (higher first), then arrival. ``seconds`` is the lease
        length wanted (None: the daemon's ``max_allocation_seconds``, which
        also caps it); ``reason`` is shown in status; ``pid`` (default this
        process) lets a daemon with NVML wait for the holder's device memory
        to be freed before it hands the device on. ``on_queued(position)``
        (a function or a coroutine function) is called for every queue
        position the daemon sends. ``timeout`` bounds the wait
        (:class:`~jimbot.errors.DeadlineExceededError`, the request is then
        withdrawn). Raises :class:`~jimbot.errors.InvalidArgumentError`,
        :class:`~jimbot.errors.BackpressureError` (too many waiters, with
        ``retry_after_ms``), :class:`~jimbot.errors.UnavailableError`...
        Cancelling the call withdraws the request.
        """
        lease = self.start_gpu(component, priority, seconds, reason, pid, on_queued=on_queued)
        try:
            return await lease.wait_granted(timeout)
        except BaseException:
            await lease.release()
            raise

    def start_gpu(self, component, priority=0, seconds=None, reason="", pid=None, *,
                  on_queued=None) -> GpuLease:
        raise NotImplementedError


class QueueApi:
    """``submit()`` on top of a ``submit_detailed()`` (shared by
    :class:`Infrastructure` and :class:`jimbot.testing.MockInfrastructure`)."""

    async def submit(self, queue: str, message, *, timeout: Optional[float] = None,
                     priority: int = 0, bypass_cache: bool = False,
                     request_id: Optional[str] = None, component: Optional[str] = None,
                     response_type=None, type: Optional[str] = None):
        """Put ``message`` on ``queue`` and return the worker's answer,
        decoded (see :meth:`Infrastructure.submit_detailed`, which also says
        ``cached`` and the request id)."""
        resp = await self.submit_detailed(queue, message, timeout=timeout, priority=priority,
                                          bypass_cache=bypass_cache, request_id=request_id,
                                          component=component, response_type=response_type,
                                          type=type)
        return resp.message

    async def submit_detailed(self, queue, message, **kw) -> QueueResponse:
        raise NotImplementedError


class QueueWorker:
    """A worker taking requests off one queue: one ``TakeRequests`` stream.

    Made by :meth:`Infrastructure.take`; the stream opens at once. An async
    iterator of :class:`jimbot.queues.QueueRequest`, and an async context
    manager whose entry waits for :meth:`ready` and whose exit closes it.
    The daemon hands it at most ``max_outstanding`` unanswered requests;
    answer each with ``await req.respond(msg)`` or ``await req.fail(text)``.
    Closing (or the process ending) ends the stream, and the daemon gives
    the requests it still holds unanswered back to the queue (their next
    worker sees ``delivery_count`` grow). After UNAVAILABLE (the daemon
    restarting) the stream is re-opened with backoff unless ``reconnect`` is
    False; ``reconnects`` counts that. Other errors (NOT_FOUND for an
    unknown queue, INVALID_ARGUMENT) are raised by :meth:`ready` and the
    iteration.
    """

    def __init__(self, infra: "Infrastructure", request: pb.TakeRequestsRequest, *,
                 reconnect: bool = True):
        self._infra = infra
        self.request = request
        self.queue = request.queue
        self._reconnect = reconnect
        self._backoff = _Backoff(0.1, 2.0)
        self._closed = False
        self._registered = False
        self._call = None
        #: How many times the stream was re-opened after UNAVAILABLE.
        self.reconnects = 0
        self._open()

    def _open(self) -> None:
        self._call = self._infra._stub_or_raise().TakeRequests(self.request)
        self._registered = False
        self._infra._workers.add(self)

    async def _register(self) -> None:
        """Wait for the initial metadata: the daemon sends it, marked
        ``jimbot-worker``, once the worker is registered. A refusal comes as a
        status alone, for which gRPC reports empty metadata: then the call's
        end raises its error."""
        if self._registered:
            return
        md = await self._call.initial_metadata()
        if not any(k == WORKER_KEY for k, _ in (md or ())):
            await self._call.read()   # raises the call's error (EOF: ended OK)
            raise UnavailableError("TakeRequests ended before the worker was registered")
        self._registered = True

    async def ready(self) -> "QueueWorker":
        """Wait until the daemon has registered this worker (submits sent
        afterwards find it), then return self."""
        while True:
            if self._closed:
                raise ClosedError("the worker was closed")
            if self._call is None:
                self._open()
            try:
                await self._register()
                return self
            except grpc.aio.AioRpcError as e:
                try:
                    await self._on_error(e)
                except StopAsyncIteration:
                    raise ClosedError("the worker was closed") from None

    async def _on_error(self, e: grpc.aio.AioRpcError) -> None:
        self._call = None
        stopping = self._closed or self._infra._closed
        if e.code() == grpc.StatusCode.UNAVAILABLE and self._reconnect and not stopping:
            delay = self._backoff.next()
            log.info("worker of queue %s: %s; reconnecting in %.2fs", self.queue, e.details(),
                     delay)
            await asyncio.sleep(delay)
            if self._closed or self._infra._closed:
                raise StopAsyncIteration
            self.reconnects += 1
            self._open()
            return
        if e.code() == grpc.StatusCode.CANCELLED and stopping:
            raise StopAsyncIteration
        raise from_rpc_error(e) from e

    def __aiter__(self) -> "QueueWorker":
        return self

    async def __anext__(self) -> QueueRequest:
        while True:
            if self._closed or self._infra._closed:
                raise StopAsyncIteration
            if self._call is None:
                self._open()
            try:
                await self._register()
                msg = await self._call.read()
            except grpc.aio.AioRpcError as e:
                await self._on_error(e)
                continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if (self._closed or self._infra._closed) and not (task and task.cancelling()):
                    raise StopAsyncIteration
                raise
            if msg is grpc.aio.EOF:
                self._call = None
                self._closed = True
                raise StopAsyncIteration
            self._backoff.reset()
            return QueueRequest(msg, self._infra._respond)

    async def close(self) -> None:
        """End the stream (idempotent): the requests this worker holds
        unanswered go back to the queue."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._infra._workers.discard(self)

    async def __aenter__(self) -> "QueueWorker":
        try:
            return await self.ready()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"<QueueWorker {self.queue} worker={self.request.worker!r} "
                f"max_outstanding={self.request.max_outstanding}>")


class Infrastructure(GpuApi, QueueApi, RedisApi):
    """Client of jimbotd's resource coordinator at ``addr`` (``host:port``).

    ``timeout_s`` bounds each unary call (``api_quota`` adds its ``wait``;
    ``submit`` has its own ``timeout``).
    ``reattach_s`` is how long a GPU lease whose stream broke tries to
    re-attach (0: never; the lease is then lost at the first break).
    ``keepalive_ms``, ``keepalive_timeout_ms``, ``credentials`` and
    ``channel_options`` are those of :class:`jimbot.EventBus`; the channel
    also gets :data:`RECONNECT_OPTIONS` unless ``channel_options`` sets them.
    """

    def __init__(self, addr: str = DEFAULT_ADDR, *, timeout_s: float = 10.0,
                 reattach_s: float = DEFAULT_REATTACH_S,
                 keepalive_ms: Optional[int] = DEFAULT_KEEPALIVE_MS,
                 keepalive_timeout_ms: int = DEFAULT_KEEPALIVE_TIMEOUT_MS,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 channel_options: Optional[Sequence] = None):
        self.addr = addr
        self._timeout_s = timeout_s
        self._reattach_s = reattach_s
        self._credentials = credentials
        self._channel_options = merge_channel_options(
            channel_options, keepalive_options(keepalive_ms, keepalive_timeout_ms),
            RECONNECT_OPTIONS)
        self._channel = None
        self._stub = None
        self._closed = False
        self._leases: set = set()
        self._workers: set = set()

    def _stub_or_raise(self) -> pb_grpc.InfrastructureStub:
        if self._closed:
            raise ClosedError("the Infrastructure client is closed")
        if self._stub is None:
            self._channel = open_channel(self.addr, self._credentials, self._channel_options)
            self._stub = pb_grpc.InfrastructureStub(self._channel)
        return self._stub

    async def _unary(self, method: str, request, timeout: Optional[float]):
        stub = self._stub_or_raise()
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected; DeadlineExceededError if not
        within ``timeout`` seconds."""
        self._stub_or_raise()
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"no connection to {self.addr} within {timeout}s") from None

    # -- GPU (gpu() and acquire_gpu() come from GpuApi) -------------------------------------------

    def start_gpu(self, component: str, priority: int = 0, seconds: Optional[float] = None,
                  reason: str = "", pid: Optional[int] = None, *,
                  on_queued: Optional[Callable[[int], object]] = None) -> GpuLease:
        """Send the GPU request and return its :class:`GpuLease` at once,
        before the grant (``await lease.wait_granted()``, or watch
        ``lease.granted``); release it in any case. For callers that want
        to do something while they wait."""
        req = gpu_request(component, priority=priority, seconds=seconds, reason=reason, pid=pid)
        self._stub_or_raise()
        lease = _StreamLease(self, req, on_queued, self._reattach_s)
        self._leases.add(lease)
        return lease

    async def release_gpu(self, lease_id: str) -> pb.ReleaseGpuResponse:
        """``ReleaseGpu`` of any lease by its id; the daemon's answer
        (``held_ms``, ``device``, ``memory_held_bytes``). NotFoundError for
        a lease that is not held, InvalidArgumentError for an empty id. Its
        holder's stream then ends (its lease has ``lost`` set)."""
        return await self._unary("ReleaseGpu", pb.ReleaseGpuRequest(lease_id=lease_id),
                                 self._timeout_s)

    # -- the API budget -------------------------------------------------------------------------

    async def api_quota(self, component: str, count: int = 1, *, wait: Optional[float] = None,
                        priority: int = 0) -> QuotaGrant:
        """Take ``count`` requests of the LLM API budget for ``component``.

        Returns a :class:`QuotaGrant` (``remaining``, ``limit``) when
        granted. When the window (or the component's share) has not enough
        left, raises :class:`~jimbot.errors.RateLimitedError` with
        ``retry_after`` (seconds). With ``wait`` (seconds) the daemon keeps
        the request up to that long and grants it as soon as budget frees
        up, higher ``priority`` first, then first come. Raises
        :class:`~jimbot.errors.InvalidArgumentError` for an empty component
        or a count that could never be granted (over the hourly limit or
        the component's share), :class:`~jimbot.errors.BackpressureError`
        when too many wait. Never retried.
        """
        if not isinstance(component, str):
            raise InvalidArgumentError("component must be a string")
        wait_ms = 0 if not wait else _uint32("wait", int(wait * 1000))
        req = pb.AcquireApiQuotaRequest(component=component, count=_uint32("count", count),
                                        wait_ms=wait_ms, priority=_int32("priority", priority))
        resp = await self._unary("AcquireApiQuota", req, self._timeout_s + wait_ms / 1000.0)
        return quota_answer(resp, component, count or 1)

    # -- the request queues ---------------------------------------------------------------------

    async def submit_detailed(self, queue: str, message, *, timeout: Optional[float] = None,
                              priority: int = 0, bypass_cache: bool = False,
                              request_id: Optional[str] = None, component: Optional[str] = None,
                              response_type=None, type: Optional[str] = None) -> QueueResponse:
        """Put ``message`` on ``queue`` and wait for a worker's answer; return
        it as a :class:`jimbot.queues.QueueResponse` (``message``,
        ``cached``, ``request_id``, ``type``, ``payload``).

        ``message`` is a protobuf message (``type`` defaults to its full
        name) or bytes with ``type``. ``timeout`` (seconds; None: the
        queue's ``timeout_ms``) bounds the wait; the gRPC deadline is
        ``timeout`` + :data:`SUBMIT_DEADLINE_SLACK_S`. Higher ``priority``
        is handed out first. ``bypass_cache`` neither reads the cache nor
        joins an equal request in flight. ``request_id`` (default: the
        daemon's) must be unused in the queue; ``component`` names the
        submitter for the worker and the logs. ``response_type`` (a message
        class) decodes the answer instead of its ``type``.

        Raises :class:`~jimbot.errors.WorkerError` (the worker answered an
        error text), :class:`~jimbot.errors.DeadlineExceededError` (no
        answer in time), :class:`~jimbot.errors.UnavailableError` (``reason``
        "no-worker": no worker takes the queue, at once; or no daemon),
        :class:`~jimbot.errors.BackpressureError` (``reason`` "queue-full":
        ``max_depth`` wait already; ``retry_after_ms``),
        :class:`~jimbot.errors.RateLimitedError` (a queue paced by the
        budget could not get a unit before the deadline; ``retry_after_ms``
        says when one could), :class:`~jimbot.errors.PoisonedRequestError`
        (handed to ``max_deliveries`` workers that went away),
        :class:`~jimbot.errors.NotFoundError` (no such queue),
        :class:`~jimbot.errors.AlreadyExistsError` (``request_id`` in use),
        :class:`~jimbot.errors.InvalidArgumentError`. Never retried;
        cancelling the call withdraws the request unless a worker holds it
        already or another submitter waits for it too.
        """
        req = make_request(queue, message, type=type, timeout=timeout, priority=priority,
                           bypass_cache=bypass_cache, request_id=request_id, component=component)
        deadline = None if timeout is None else req.timeout_ms / 1000.0 + SUBMIT_DEADLINE_SLACK_S
        resp = await self._unary("SubmitRequest", req, deadline)
        return QueueResponse.from_wire(resp, response_type)

    def take(self, queue: str, max_outstanding: int = 1, worker: Optional[str] = None, *,
             reconnect: bool = True) -> QueueWorker:
        """Become a worker of ``queue``: a :class:`QueueWorker` (an async
        iterator of :class:`jimbot.queues.QueueRequest`, and an async
        context manager that waits for the registration and closes at exit),
        holding at most ``max_outstanding`` (0 means 1; at most 1000)
        unanswered requests. ``worker`` names it in the daemon's logs."""
        return QueueWorker(self, take_request(queue, max_outstanding, worker),
                           reconnect=reconnect)

    async def _respond(self, req: QueueRequest, rtype: str, payload: bytes, error: str) -> None:
        await self._unary("Respond", pb.QueuedResponse(request_id=req.request_id, type=rtype,
                                                       payload=payload, error=error),
                          self._timeout_s)

    # -- the shared Redis (redis() comes from RedisApi) -----------------------------------------

    async def redis_access(self, component: str) -> RedisAccess:
        """``GetRedisAccess``: the :class:`jimbot.RedisAccess` of
        ``component`` (its ACL user, password, key prefix and connection
        allowance). Raises :class:`~jimbot.errors.NotFoundError` for a
        component without a namespace,
        :class:`~jimbot.errors.FailedPreconditionError` when jimbotd has no
        Redis configured, :class:`~jimbot.errors.UnavailableError` while it
        has not provisioned the users yet (Redis unreachable), and
        :class:`~jimbot.errors.InvalidArgumentError` for an empty
        component."""
        return await self._redis_call("GetRedisAccess", component)

    async def rotate_redis_password(self, component: str) -> RedisAccess:
        """``RotateRedisPassword``: gives ``component``'s ACL user a new
        password and returns the new :class:`jimbot.RedisAccess`.
        Connections already authenticated stay open; new ones (a client made
        by :meth:`redis` before the rotation included) need the new password,
        so make a new client. Errors as :meth:`redis_access`."""
        return await self._redis_call("RotateRedisPassword", component)

    async def _redis_call(self, method: str, component: str) -> RedisAccess:
        if not isinstance(component, str) or not component:
            raise InvalidArgumentError("component must be a non-empty string")
        resp = await self._unary(method, pb.GetRedisAccessRequest(component=component),
                                 self._timeout_s)
        return RedisAccess.from_message(component, resp)

    # -- status ---------------------------------------------------------------------------------

    async def status(self) -> pb.ResourceStatus:
        """``GetResourceStatus``: the ``jimbot.infra.v1.ResourceStatus``
        message as the daemon sent it (``gpus``, ``gpu_waiters``,
        ``claude_requests_remaining``... see docs/python.md)."""
        return await self._unary("GetResourceStatus", pb.GetResourceStatusRequest(),
                                 self._timeout_s)

    # -- lifetime -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Release every lease, withdraw every request and end every worker
        of this client, then close the channel (idempotent)."""
        if self._closed:
            return
        for lease in list(self._leases):
            await lease.release()
        for w in list(self._workers):
            await w.close()
        self._closed = True
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def __aenter__(self) -> "Infrastructure":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
