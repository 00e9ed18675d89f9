#!/usr/bin/env python3
"""A worker for jimbotd's `claude` request queue: takes StrategyRequests,
asks the LLM, answers StrategyResponses.

    PYTHONPATH=build/python /usr/bin/python3 examples/llm_worker.py \\
        --addr 127.0.0.1:50051 -c config/infrastructure.yaml --env production

Components never call the LLM themselves: they `await infra.submit("claude",
StrategyRequest(...))`, and jimbotd paces the queue by the API budget,
answers equal requests from its cache and hands each remaining request to
one worker like this one (docs/coordinator.md "The request queue"). The
worker is the only process that needs the API key.

Design notes:

* The LLM call is one async function, `StrategyRequest -> StrategyResponse`,
  made by a factory from the API key. The default, `stub_llm`, answers
  without any network (it picks the first option); `--llm MODULE:FACTORY`
  swaps in a real client: `FACTORY(api_key)` must return such a function
  (see `anthropic_llm` below for the shape). An exception it raises becomes
  the request's error text (the submitter gets jimbot.errors.WorkerError);
  nothing failed is cached.
* The API key (a secret) comes from, in this order: `--api-key` (visible to
  `ps`; for trying it by hand only), the environment variable
  JIMBOT_CLAUDE_API_KEY, the configuration key
  `resource_coordinator.claude.api_key` of `-c FILE` and its environment file
  (`config/<env>.yaml` beside it, `--env`, else $JIMBOT_ENV, else
  development), with the substitutions of docs/configuration.md: `${VAR}`,
  `${VAR:-default}`, `${file:PATH}` (relative to the YAML file's folder) and
  `$${`. Component and feature levels are not read. The key is never
  logged.
* `--max-outstanding N` requests are worked on at once (the daemon hands
  out no more); the stream re-opens by itself when jimbotd restarts, and
  requests held when the worker dies go back to the queue.

Exit status: 0 on SIGINT/SIGTERM, 2 for bad arguments or no API key,
1 when the daemon refuses the worker (an unknown queue, say).
"""

import argparse
import asyncio
import importlib
import logging
import os
import re
import signal
import sys
import time
from typing import Awaitable, Callable

import jimbot
from jimbot import errors
from jimbot.infrastructure.serialization.strategy_events_pb2 import (StrategyRequest,
                                                                     StrategyResponse)

log = logging.getLogger("llm_worker")

API_KEY_ENV = "JIMBOT_CLAUDE_API_KEY"
API_KEY_PATH = ("resource_coordinator", "claude", "api_key")
LLM = Callable[[StrategyRequest], Awaitable[StrategyResponse]]


# -- The LLM call ------------------------------------------------------------------------------

def stub_llm(api_key: str) -> LLM:
    """The stand-in for a real client: no network, the first option."""

    async def ask(req: StrategyRequest) -> StrategyResponse:
        chosen = 0 if req.options else -1
        advice = req.options[0] if req.options else f"no strong opinion on: {req.question}"
        return StrategyResponse(request_id=req.request_id, recommendation=advice,
                                chosen_option=chosen, confidence=0.5,
                                reasoning="stub: the first option", model="stub")
    return ask


def anthropic_llm(api_key: str) -> LLM:
    """The shape of a real client (needs the `anthropic` package and the
    network; not used by default): `--llm llm_worker:anthropic_llm`."""
    import anthropic  # noqa: PLC0415: only when chosen
    client = anthropic.AsyncAnthropic(api_key=api_key)

    async def ask(req: StrategyRequest) -> StrategyResponse:
        prompt = req.question + "".join(f"\n{i}: {o}" for i, o in enumerate(req.options))
        msg = await client.messages.create(model="claude-sonnet-4-5", max_tokens=512,
                                           messages=[{"role": "user", "content": prompt}])
        return StrategyResponse(request_id=req.request_id, recommendation=msg.content[0].text,
                                chosen_option=-1, model=msg.model,
                                input_tokens=msg.usage.input_tokens,
                                output_tokens=msg.usage.output_tokens)
    return ask


def load_llm(spec: str) -> Callable[[str], LLM]:
    """`MODULE:FACTORY` -> the factory (this file's own names without a module)."""
    module, _, name = spec.rpartition(":")
    if not module:
        return globals()[name]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return getattr(importlib.import_module(module), name)


# -- The API key -------------------------------------------------------------------------------

_SUBST = re.compile(r"\$\$\{|\$\{([^}]*)\}")


def expand(value: str, base_dir: str) -> str:
    """docs/configuration.md's substitutions in one value."""
    def one(m):
        if m.group(0) == "$${":
            return "${"
        ref = m.group(1)
        if ref.startswith("file:"):
            path = os.path.join(base_dir, ref[5:])
            with open(path) as f:
                text = f.read(64 * 1024 + 1)
            if len(text) > 64 * 1024:
                raise ValueError(f"{path}: over 64 KiB")
            return text[:-1] if text.endswith("\n") else text
        name, sep, default = ref.partition(":-")
        got = os.environ.get(name)
        if sep:
            return got or default
        if got is None:
            raise ValueError(f"environment variable {name} is not set and has no default")
        return got
    return _SUBST.sub(one, value)


def key_from_config(path: str, env: str) -> str:
    """resource_coordinator.claude.api_key from FILE and its environment file."""
    try:
        import yaml  # noqa: PLC0415: Debian's python3-yaml (clang-tidy pulls it in)
    except ImportError:
        raise ValueError("reading -c FILE needs PyYAML (Debian: python3-yaml)") from None
    found = None
    env_path = os.path.join(os.path.dirname(path), f"{env}.yaml")
    for file in (path, env_path):
        if file != path and not os.path.exists(file):
            continue
        with open(file) as f:
            node = yaml.safe_load(f) or {}
        for part in API_KEY_PATH:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found = expand(str(node), os.path.dirname(os.path.abspath(file)))
    return found or ""


def api_key(args) -> str:
    if args.api_key:
        return args.api_key
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    if args.config:
        return key_from_config(args.config, args.env or os.environ.get("JIMBOT_ENV")
                               or "development")
    return ""


# -- The worker --------------------------------------------------------------------------------

async def handle(req: jimbot.QueueRequest, ask: LLM) -> None:
    """Answer one request; an answer the daemon no longer takes (the stream
    broke meanwhile and the request went back to the queue) is logged."""
    try:
        await answer(req, ask)
    except errors.JimbotError as e:
        log.warning("could not answer %s: %s", req.request_id, e)


async def answer(req: jimbot.QueueRequest, ask: LLM) -> None:
    if req.type != StrategyRequest.DESCRIPTOR.full_name:
        await req.fail(f"llm_worker answers {StrategyRequest.DESCRIPTOR.full_name}, "
                       f"not {req.type!r}")
        return
    started = time.monotonic()
    try:
        resp = await ask(req.message)
    except Exception as e:  # noqa: BLE001: the submitter hears of it
        log.warning("request %s failed: %s", req.request_id, e)
        await req.fail(f"{type(e).__name__}: {e}")
        return
    if not resp.timestamp_ms:
        resp.timestamp_ms = int(time.time() * 1000)
    await req.respond(resp)
    log.debug("answered %s (delivery %d, from %s) in %.0f ms", req.request_id,
             req.delivery_count, req.submitter, (time.monotonic() - started) * 1000)


async def serve(args, ask: LLM) -> int:
    async with jimbot.Infrastructure(args.addr) as infra:
        try:
            async with infra.take(args.queue, args.max_outstanding, args.name) as requests:
                log.info("ready: worker %s of queue %s on %s", args.name, args.queue, args.addr)
                tasks = set()
                async for req in requests:
                    t = asyncio.ensure_future(handle(req, ask))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
        except errors.JimbotError as e:
            log.error("%s", e)
            return 1
    return 0


def parse(argv):
    p = argparse.ArgumentParser(
        description="A worker for jimbotd's request queue: answers StrategyRequests with the "
                    "LLM (a stub unless --llm names a real client).",
        epilog=f"The API key: --api-key, else ${API_KEY_ENV}, else "
               "resource_coordinator.claude.api_key of -c FILE (with ${VAR}/${file:PATH}).")
    p.add_argument("--addr", default=os.environ.get("JIMBOT_ADDR", "127.0.0.1:50051"),
                   help="jimbotd's address (default $JIMBOT_ADDR or 127.0.0.1:50051)")
    p.add_argument("--queue", default="claude", help="the queue to take (default claude)")
    p.add_argument("--name", default=f"llm-worker-{os.getpid()}", help="this worker's name")
    p.add_argument("--max-outstanding", type=int, default=1,
                   help="requests worked on at once (default 1)")
    p.add_argument("-c", "--config", help="the YAML configuration to read the API key from")
    p.add_argument("--env", help="its environment file's name (default $JIMBOT_ENV or "
                                 "development)")
    p.add_argument("--api-key", help="the API key itself (shows in ps; for trying by hand)")
    p.add_argument("--llm", default="stub_llm",
                   help="MODULE:FACTORY of the LLM client (default stub_llm, no network)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every answer")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s llm_worker %(levelname)s %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        key = api_key(args)
    except (OSError, ValueError) as e:
        print(f"llm_worker: the API key: {e}", file=sys.stderr)
        return 2
    if not key:
        print(f"llm_worker: no API key (--api-key, ${API_KEY_ENV}, or "
              "resource_coordinator.claude.api_key in -c FILE)", file=sys.stderr)
        return 2
    ask = load_llm(args.llm)(key)
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(args, ask))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        return 0
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
