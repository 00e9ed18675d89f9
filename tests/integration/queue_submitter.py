"""A submitter process for test_python_queue.py: one submit to a jimbotd
queue, its outcome on stdout as one JSON line.

    queue_submitter.py ADDR QUEUE QUESTION [--priority P] [--timeout S]
                       [--component C] [--bypass-cache]

First {"event": "submitting"} (the submit is about to go out; the parent
then waits for the daemon's status to show it), then either
{"event": "answer", "recommendation", "cached", "request_id"} or
{"event": "error", "class", "reason", "retry_after_ms", "details"}.
"""
import argparse
import asyncio
import json

import jimbot
from jimbot import errors
from jimbot.infrastructure.serialization.strategy_events_pb2 import StrategyRequest


def say(**fields):
    print(json.dumps(fields), flush=True)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("queue")
    p.add_argument("question")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--component", default="submitter")
    p.add_argument("--bypass-cache", action="store_true")
    args = p.parse_args()
    async with jimbot.Infrastructure(args.addr) as infra:
        await infra.wait_ready()
        say(event="submitting")
        try:
            r = await infra.submit_detailed(args.queue, StrategyRequest(question=args.question),
                                            timeout=args.timeout, priority=args.priority,
                                            component=args.component,
                                            bypass_cache=args.bypass_cache)
        except errors.JimbotError as e:
            say(event="error", **{"class": type(e).__name__}, reason=e.reason,
                retry_after_ms=e.retry_after_ms, details=e.details)
        else:
            say(event="answer", recommendation=r.message.recommendation, cached=r.cached,
                request_id=r.request_id)


if __name__ == "__main__":
    asyncio.run(main())
