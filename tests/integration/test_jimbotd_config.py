"""jimbotd and its configuration, end to end, with the real binary.

* --check-config on the shipped configuration exits 0 and prints every key;
* --check-config on a file with an unknown key, a bad type and a missing
  ${VAR} exits 1 and prints all three errors with their line numbers;
* secrets never reach the output;
* a running jimbotd applies a valid edit, keeps its configuration on an
  invalid edit, reloads on SIGHUP, says each in its log, and exits 0 on
  SIGTERM.

Timeouts are generous and only keep a broken daemon from hanging the suite;
nothing here asserts how fast things happen.
"""
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SOURCE = os.environ.get("JB_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(SOURCE, "build", "bin"))
JIMBOTD = os.path.join(BIN, "jimbotd")
TIMEOUT = 20.0


def run(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([JIMBOTD, *args], capture_output=True, text=True, timeout=60, env=e)


class CheckConfig(unittest.TestCase):
    def test_shipped_config_is_valid(self):
        r = run("-c", os.path.join(SOURCE, "config", "infrastructure.yaml"), "--check-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        for line in ("event_bus.batch_window_ms = 100  # ",
                     "monitoring.questdb_url = \"http://localhost:9000\"",
                     "resource_coordinator.gpu.priority_components = [\"training\", \"inference\"]",
                     "resource_coordinator.claude.api_key = ***"):
            self.assertIn(line, r.stdout)

    def test_three_errors_with_lines(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "infrastructure.yaml")
            with open(path, "w") as f:
                f.write("event_bus:\n"
                        "  batch_window_ms: 100\n"
                        "  max_batch_sizee: 10\n"           # line 3: unknown key
                        "  grpc_port: fifty\n"              # line 4: bad type
                        "monitoring:\n"
                        "  questdb_url: ${JB_IT_NOT_SET}\n")  # line 6: missing variable
            env = {k: v for k, v in os.environ.items() if k != "JB_IT_NOT_SET"}
            r = subprocess.run([JIMBOTD, "-c", path, "--check-config"], capture_output=True,
                               text=True, timeout=60, env=env)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            out = r.stderr
            self.assertIn(f"{path}:3: event_bus.max_batch_sizee: unknown key "
                          "(did you mean event_bus.max_batch_size?)", out)
            self.assertIn(f"{path}:4: event_bus.grpc_port: expected an integer, got 'fifty'", out)
            self.assertIn(f"{path}:6: monitoring.questdb_url: environment variable "
                          "JB_IT_NOT_SET is not set and has no default", out)
            self.assertEqual(r.stdout, "")

    def test_secrets_are_masked(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "infrastructure.yaml")
            with open(os.path.join(d, "redis.pw"), "w") as f:
                f.write("pw-from-a-file\n")
            with open(path, "w") as f:
                f.write("resource_coordinator:\n"
                        "  claude: {api_key: '${JB_IT_KEY}'}\n"
                        "  redis: {password: '${file:redis.pw}'}\n")
            r = run("-c", path, "--check-config", env={"JB_IT_KEY": "sk-it-secret"})
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("sk-it-secret", r.stdout + r.stderr)
            self.assertNotIn("pw-from-a-file", r.stdout + r.stderr)
            self.assertIn("resource_coordinator.claude.api_key = ***", r.stdout)
            self.assertIn("resource_coordinator.redis.password = ***", r.stdout)

    def test_environment_layer(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "infrastructure.yaml"), "w") as f:
                f.write("event_bus: {batch_window_ms: 100}\n")
            with open(os.path.join(d, "production.yaml"), "w") as f:
                f.write("event_bus: {batch_window_ms: 20}\n")
            base = os.path.join(d, "infrastructure.yaml")
            r = run("-c", base, "--env", "production", "--check-config")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("event_bus.batch_window_ms = 20  # " + os.path.join(d, "production.yaml")
                          + ":1", r.stdout)
            r = run("-c", base, "--check-config", env={"JIMBOT_ENV": "production"})
            self.assertIn("event_bus.batch_window_ms = 20", r.stdout)


class Daemon:
    """jimbotd in the background, its stderr read line by line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([JIMBOTD, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.log = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self):
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, *needles):
        """The first new log line that contains every needle."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.log.append(line)
            if all(n in line for n in needles):
                return line
        raise AssertionError(f"no log line with {needles}; log so far:\n" + "\n".join(self.log))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.pump.join(timeout=TIMEOUT)
        self.proc.stderr.close()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


class Reload(unittest.TestCase):
    def test_edit_invalid_edit_sighup_sigterm(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "infrastructure.yaml")
            write(path, "event_bus:\n  batch_window_ms: 100\n  grpc_port: 50051\n")
            # Its own socket: the configured port may be in use on this host.
            daemon = Daemon("-c", path, "--env", "it", "--data-dir", os.path.join(d, "var"),
                            "--listen", "unix:" + os.path.join(d, "jimbotd.sock"))
            try:
                daemon.wait_for("daemon", "started")

                # A valid edit applies.
                write(path, "event_bus:\n  batch_window_ms: 250\n  grpc_port: 50051\n")
                line = daemon.wait_for("config reloaded")
                self.assertIn("version=2", line)
                self.assertIn("changed=event_bus.batch_window_ms", line)
                self.assertIn("pending_restart=-", line)

                # An invalid edit is refused, with its error, and counted.
                write(path, "event_bus:\n  batch_window_ms: soon\n  grpc_port: 50051\n")
                line = daemon.wait_for("config reload failed")
                self.assertIn("errors=1", line)
                self.assertIn("failed_reloads=1", line)
                line = daemon.wait_for("config error")
                self.assertIn("event_bus.batch_window_ms: expected an integer", line)
                self.assertIn(":2:", line)

                # Saving by rename (editors) and a restart-only key: pending, not applied.
                tmp = os.path.join(d, ".infrastructure.yaml.swp")
                write(tmp, "event_bus:\n  batch_window_ms: 300\n  grpc_port: 6000\n")
                os.rename(tmp, path)
                line = daemon.wait_for("config reloaded")
                self.assertIn("version=3", line)
                self.assertIn("changed=event_bus.batch_window_ms", line)
                self.assertIn("pending_restart=event_bus.grpc_port", line)

                # An environment file created later, picked up by SIGHUP or the watch.
                write(os.path.join(d, "it.yaml"), "log:\n  level: debug\n")
                daemon.proc.send_signal(signal.SIGHUP)
                line = daemon.wait_for("config reloaded", "changed=log.level")
                self.assertIn("version=4", line)

                daemon.proc.send_signal(signal.SIGTERM)
                self.assertEqual(daemon.proc.wait(timeout=TIMEOUT), 0)
                daemon.wait_for("daemon", "stopped")
            finally:
                daemon.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2, argv=[sys.argv[0]])
