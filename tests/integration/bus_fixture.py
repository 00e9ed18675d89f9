"""The server the Python client's integration tests talk to: one switch.

By default the tests run against :class:`fake_eventbus.FakeEventBus`, an
in-process stand-in. With ``JB_USE_REAL_DAEMON=1`` they run against the real
``$JB_BIN_DIR/jimbotd`` instead, started on a free loopback port with a
temporary data directory and the shipped configuration. Tests that need a
control only the fake has (counting requests at the server, forcing
backpressure) check ``server.fake`` and skip otherwise.

Both kinds offer: ``addr``, ``await start()``, ``await stop()``,
``await restart(down_s)``.
"""

import asyncio
import os
import signal
import socket
import subprocess
import tempfile

import jimbot
from fake_eventbus import FakeEventBus

USE_REAL_DAEMON = os.environ.get("JB_USE_REAL_DAEMON") == "1"
SOURCE = os.environ.get("JB_SOURCE_DIR",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(SOURCE, "build", "bin"))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealDaemon:
    """build/bin/jimbotd on loopback, in a temporary data directory."""

    fake = False

    def __init__(self):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="jb-pyclient-")
        self._proc = None
        self._log = None

    async def start(self) -> "RealDaemon":
        """Start jimbotd and wait until its health check says SERVING."""
        self._log = open(os.path.join(self._tmp.name, "jimbotd.log"), "ab")
        self._proc = subprocess.Popen(
            [os.path.join(BIN, "jimbotd"), "-c", os.path.join(SOURCE, "config",
                                                                "infrastructure.yaml"),
             "--listen", self.addr, "--data-dir", os.path.join(self._tmp.name, "data")],
            stdout=self._log, stderr=subprocess.STDOUT)
        bus = jimbot.EventBus(self.addr)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"jimbotd exited with {self._proc.returncode}; "
                                       f"see {self._log.name}")
                try:
                    if await bus.health(timeout=1) == "SERVING":
                        return self
                except jimbot.errors.JimbotError:
                    pass
                if loop.time() > deadline:
                    raise RuntimeError("jimbotd did not become SERVING within 20 s")
                await asyncio.sleep(0.1)
        finally:
            await bus.close()

    async def stop(self) -> None:
        """SIGTERM, as an operator would; wait for it to exit."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, self._proc.wait, 30)
            self._proc = None
            self._log.close()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start on the same port and data."""
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    def cleanup(self) -> None:
        self._tmp.cleanup()


async def start_server():
    """The server for one test: the fake, or jimbotd with JB_USE_REAL_DAEMON=1."""
    if USE_REAL_DAEMON:
        return await RealDaemon().start()
    return await FakeEventBus().start()


async def stop_server(server) -> None:
    await server.stop()
    if hasattr(server, "cleanup"):
        server.cleanup()
