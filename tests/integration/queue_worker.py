"""A worker process for test_python_queue.py: takes one queue of a jimbotd
and reports on stdout, one JSON object a line.

    queue_worker.py ADDR QUEUE [--name N] [--max-outstanding N] [--hold] [--fail TEXT]

* {"event": "ready"} once the daemon registered it (initial metadata): a
  submit sent afterwards finds it;
* {"event": "got", "request_id", "delivery_count", "priority", "submitter",
  "timeout_ms", "type", "question"} for each request handed to it;
* {"event": "answered", "request_id"} after its Respond was accepted.

It answers each request with a StrategyResponse whose recommendation is
"NAME:QUESTION" (or fails it with --fail TEXT). With --hold it answers only
when told: each line "answer" on stdin answers the oldest request held
(the parent reads "got" first, so it knows which). Killed with SIGKILL by
the tests to play a worker that dies mid-request.
"""
import argparse
import asyncio
import json
import sys

import jimbot
from jimbot.infrastructure.serialization.strategy_events_pb2 import StrategyResponse


def say(**fields):
    print(json.dumps(fields), flush=True)


async def answer(req, args):
    if args.fail:
        await req.fail(args.fail)
    else:
        q = req.message.question
        await req.respond(StrategyResponse(request_id=req.request_id,
                                           recommendation=f"{args.name}:{q}",
                                           model="stub"))
    say(event="answered", request_id=req.request_id)


async def read_commands(held: asyncio.Queue, args):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if line.strip() == "answer":
            await answer(await held.get(), args)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("queue")
    p.add_argument("--name", default="w")
    p.add_argument("--max-outstanding", type=int, default=1)
    p.add_argument("--hold", action="store_true")
    p.add_argument("--fail", default="")
    args = p.parse_args()
    held: asyncio.Queue = asyncio.Queue()
    async with jimbot.Infrastructure(args.addr) as infra:
        async with infra.take(args.queue, args.max_outstanding, args.name,
                              reconnect=False) as requests:
            say(event="ready")
            commands = asyncio.ensure_future(read_commands(held, args)) if args.hold else None
            async for req in requests:
                say(event="got", request_id=req.request_id, delivery_count=req.delivery_count,
                    priority=req.priority, submitter=req.submitter, timeout_ms=req.timeout_ms,
                    type=req.type, question=req.message.question)
                if args.hold:
                    held.put_nowait(req)
                else:
                    await answer(req, args)
            if commands is not None:
                commands.cancel()


if __name__ == "__main__":
    asyncio.run(main())
