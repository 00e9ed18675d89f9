"""A STAND-IN for jimbotd's EventBus service, for the Python client's tests.

This is not the bus. It is a small in-process ``grpc.aio`` server that
speaks ``jimbot.infra.v1.EventBus`` (and ``grpc.health.v1.Health``) over a
real loopback socket, with the routing, groups, credits, acks and nacks of
:class:`jimbot.testing.MockEventBus` behind it, so that the client's
networking (channels, streams, metadata, status codes, reconnects) is
exercised for real before jimbotd's gRPC server exists. It keeps nothing
on disk and has no batch windows; ``restart()`` keeps its memory, as a
daemon restarted over its data directory would.

Test controls that the real daemon does not have:

* ``publish_requests`` / ``published_events``: Publish calls and events seen;
* ``refuse_publishes(n, retry_after_ms)``: the next ``n`` Publish calls are
  answered ``RESOURCE_EXHAUSTED`` with trailing metadata
  ``retry-after-ms``, as the daemon answers under backpressure;
* ``stop()`` / ``start()`` / ``restart()``: on the same port, so that a
  client sees ``UNAVAILABLE`` and reconnects.

The subscription's initial metadata carries ``jimbot-group`` (the group's
name, generated for a private group), which the client uses to ack.
"""

import asyncio
import os
import sys

import grpc

from jimbot.errors import JimbotError
from jimbot.infra.v1 import event_bus_pb2 as pb
from jimbot.infra.v1 import event_bus_pb2_grpc as pb_grpc
from jimbot.infra.v1 import health_pb2, health_pb2_grpc
from jimbot.testing import MockEventBus


def _status(err: JimbotError) -> grpc.StatusCode:
    return err.code or grpc.StatusCode.INTERNAL


async def _next_batch(sub):
    """The subscription's next batch, or None once it has ended."""
    try:
        return await sub.__anext__()
    except StopAsyncIteration:
        return None


class _EventBusServicer(pb_grpc.EventBusServicer):
    def __init__(self, fake: "FakeEventBus"):
        self.fake = fake

    async def Publish(self, request, context):
        fake = self.fake
        fake.publish_requests += 1
        if fake._refusals > 0:
            fake._refusals -= 1
            context.set_trailing_metadata((("retry-after-ms", str(fake._retry_after_ms)),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "fake: publish refused")
        try:
            results = await fake.engine.publish_envelopes(list(request.events))
        except JimbotError as e:
            await context.abort(_status(e), e.details)
        fake.published_events += len(request.events)
        return pb.PublishResponse(sequences=[s for s, _ in results],
                                  duplicates=[d for _, d in results])

    async def Subscribe(self, request, context):
        try:
            sub = self.fake.engine.subscribe(
                request.pattern, request.group or None, max_in_flight=request.max_in_flight,
                deliver_policy=request.deliver_policy, start_sequence=request.start_sequence,
                start_time_ms=request.start_time_ms, max_deliver=request.max_deliver)
        except JimbotError as e:
            await context.abort(_status(e), e.details)
        draining = asyncio.ensure_future(self.fake._draining.wait())
        nxt = None
        try:
            await context.send_initial_metadata((("jimbot-group", sub.group),))
            while True:
                nxt = asyncio.ensure_future(_next_batch(sub))
                await asyncio.wait({nxt, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    # Shutting down: end the stream as a draining jimbotd does.
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "fake: shutting down")
                batch = nxt.result()
                if batch is None:
                    return
                yield pb.EventBatch(events=[e.envelope for e in batch])
        finally:
            draining.cancel()
            if nxt is not None:
                nxt.cancel()
            await sub.close()

    async def Ack(self, request, context):
        try:
            unknown = await self.fake.engine.ack(request.group, list(request.sequences))
        except JimbotError as e:
            await context.abort(_status(e), e.details)
        return pb.AckResponse(unknown=unknown)

    async def Nack(self, request, context):
        try:
            unknown = await self.fake.engine.nack(request.group, list(request.sequences),
                                                  request.delay_ms)
        except JimbotError as e:
            await context.abort(_status(e), e.details)
        return pb.NackResponse(unknown=unknown)


class _HealthServicer(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class FakeEventBus:
    """The stand-in server; see the module's documentation.

    ``await FakeEventBus().start()`` listens on a free loopback port
    (``addr`` then holds ``127.0.0.1:PORT``); ``stop()`` ends every stream
    with UNAVAILABLE, as a draining daemon does.
    """

    #: Tests check this before using the controls the real daemon lacks.
    fake = True

    def __init__(self, port: int = 0):
        self.port = port
        self.addr = None
        self.engine = MockEventBus()
        self.publish_requests = 0
        self.published_events = 0
        self._refusals = 0
        self._retry_after_ms = 0
        self._server = None
        self._draining = asyncio.Event()

    def refuse_publishes(self, n: int, retry_after_ms: int) -> None:
        """Answer the next ``n`` Publish calls RESOURCE_EXHAUSTED."""
        self._refusals = n
        self._retry_after_ms = retry_after_ms

    async def start(self) -> "FakeEventBus":
        """Listen (on the same port as before, after a stop)."""
        self._draining = asyncio.Event()
        self._server = grpc.aio.server()
        pb_grpc.add_EventBusServicer_to_server(_EventBusServicer(self), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(_HealthServicer(), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        if self.port == 0:
            raise RuntimeError("fake event bus: could not bind a loopback port")
        self.addr = f"127.0.0.1:{self.port}"
        await self._server.start()
        return self

    async def stop(self) -> None:
        """End every stream with UNAVAILABLE, stop listening and end every
        other call (the engine's memory stays)."""
        if self._server is not None:
            self._draining.set()
            await self._server.stop(grace=0.2)
            self._server = None

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()


async def _main() -> None:
    """Run the stand-in alone: ``python3 fake_eventbus.py [PORT]``."""
    fake = await FakeEventBus(int(sys.argv[1]) if len(sys.argv) > 1 else 50051).start()
    print(f"fake event bus on {fake.addr} (pid {os.getpid()})", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
