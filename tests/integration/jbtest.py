"""Shared helpers for the integration tests that drive a real jimbotd over gRPC.

A `Daemon` runs build/bin/jimbotd (found through JB_BIN_DIR) on a free
loopback port with a temporary data dir and a configuration written from
the test's YAML; it can be stopped with a signal, killed and restarted on
the same port and data dir. Unless told `any_topic=False`, it also writes the
environment layer it.yaml with `event_bus.topics: []`, so that tests may use
any topic (the shipped default allows only game_events, training_updates and
strategy_requests). `Collector` reads one Subscribe stream on a
thread. Timeouts only keep a broken daemon from hanging the suite; nothing
asserts how fast things happen.
"""
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import grpc

from jimbot.infra.v1 import event_bus_pb2 as eb
from jimbot.infra.v1 import event_bus_pb2_grpc as ebg
from jimbot.infra.v1 import health_pb2, health_pb2_grpc
from jimbot.infra.v1 import infrastructure_pb2_grpc

SOURCE = os.environ.get("JB_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(SOURCE, "build", "bin"))
JIMBOTD = os.path.join(BIN, "jimbotd")
TIMEOUT = 30.0

# Reconnect quickly after a restart of the daemon.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """jimbotd on a free port in a temporary folder; its stderr is kept."""

    def __init__(self, config="", port=None, unix=False, any_topic=True):
        self.tmp = tempfile.mkdtemp(prefix="jbtest-")
        self.data_dir = os.path.join(self.tmp, "var")
        self.config_path = os.path.join(self.tmp, "infrastructure.yaml")
        with open(self.config_path, "w") as f:
            f.write(config)
        if any_topic:
            with open(os.path.join(self.tmp, "it.yaml"), "w") as f:
                f.write("event_bus:\n  topics: []\n")
        # Without a port the first start binds port 0 and reads the port from the
        # log: a port chosen here and bound later could be taken meanwhile (by any
        # client's outgoing connection). Restarts reuse it.
        self.port = port or 0
        self.address = (f"unix:{os.path.join(self.tmp, 'jimbotd.sock')}" if unix
                        else f"127.0.0.1:{self.port}")
        self.proc = None
        self.log = []
        self.lines = queue.Queue()
        self.start()

    def start(self, extra_args=()):
        self.proc = subprocess.Popen(
            [JIMBOTD, "-c", self.config_path, "--env", "it", "--data-dir", self.data_dir,
             "--listen", self.address, *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.pump = threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True)
        self.pump.start()
        line = self.wait_for("gRPC server listening")
        if self.address.endswith(":0"):
            self.address = line.rsplit("address=", 1)[1].strip()
            self.port = int(self.address.rsplit(":", 1)[1])
        return self

    def _pump(self, proc, lines):
        for line in proc.stderr:
            self.log.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def wait_for(self, needle, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"jimbotd exited ({self.proc.wait()}) before '{needle}':\n"
                                     + "\n".join(self.log[-30:]))
            if needle in line:
                return line
        raise AssertionError(f"no '{needle}' in the log:\n" + "\n".join(self.log[-30:]))

    def channel(self):
        ch = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
        return ch

    def stop(self, sig=signal.SIGTERM):
        """Sends @sig and returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self):
        """Waits for the daemon to exit (after a signal sent elsewhere); its status."""
        rc = self.proc.wait(timeout=TIMEOUT)
        self._reap()
        return rc

    def _reap(self):
        self.pump.join(timeout=TIMEOUT)
        self.proc.stderr.close()
        self.proc = None

    def kill(self):
        return self.stop(signal.SIGKILL)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self._reap()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Stubs:
    def __init__(self, channel):
        self.channel = channel
        self.bus = ebg.EventBusStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.infra = infrastructure_pb2_grpc.InfrastructureStub(channel)

    def publish(self, *events, timeout=TIMEOUT):
        return self.bus.Publish(eb.PublishRequest(events=list(events)), timeout=timeout)

    def ack(self, group, seqs):
        return self.bus.Ack(eb.AckRequest(group=group, sequences=list(seqs)), timeout=TIMEOUT)


def event(topic, payload=b"", **kw):
    return eb.Event(topic=topic, payload=payload, **kw)


class Collector:
    """One Subscribe stream read on a thread; events accumulate in .events."""

    def __init__(self, stubs, pattern, group="", ack=False, **opts):
        self.stubs = stubs
        self.group = group
        self.ack = ack
        self.events = []
        self.batch_sizes = []
        self.error = None
        self.cond = threading.Condition()
        self.call = stubs.bus.Subscribe(eb.SubscribeRequest(pattern=pattern, group=group, **opts))
        # The initial metadata arrives once the subscription exists.
        md = dict(self.call.initial_metadata())
        self.group = md.get("jimbot-group", group)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for batch in self.call:
                with self.cond:
                    self.events.extend(batch.events)
                    self.batch_sizes.append(len(batch.events))
                    self.cond.notify_all()
                if self.ack:
                    self.stubs.ack(self.group, [e.sequence for e in batch.events])
        except grpc.RpcError as e:
            with self.cond:
                self.error = e
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def wait_count(self, n, timeout=TIMEOUT):
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n or self.error is not None,
                               timeout=timeout)
            return list(self.events)

    def wait_error(self, timeout=TIMEOUT):
        with self.cond:
            self.cond.wait_for(lambda: self.error is not None, timeout=timeout)
            return self.error

    def cancel(self):
        self.call.cancel()
        self.thread.join(timeout=TIMEOUT)


def sequences(events):
    return [e.sequence for e in events]
