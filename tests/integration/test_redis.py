"""The shared Redis through a real jimbotd and a real redis-server (docs/redis.md): the ACL user of
each namespace (its own prefix read-write, the shared prefix as configured, nothing else: NOPERM),
GetRedisAccess and its refusals, the connection budget enforced by jimbotd, credentials that
survive a restart of jimbotd, and Redis stopped and started again.

Run with /usr/bin/python3 (Debian's grpcio and redis); PYTHONPATH must hold build/python.
"""
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc
import redis

import jbtest
from jimbot.infra.v1 import infrastructure_pb2 as pb

TIMEOUT = jbtest.TIMEOUT
ADMIN_PASSWORD = "admin-secret"
# What redis-py raises for a refused AUTH (WRONGPASS), depending on how it came.
AUTH_ERRORS = (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)


class RedisServer:
    """redis-server on a free loopback port in a temporary folder, password-protected."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="jbredis-")
        self.port = jbtest.free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.tmp, "--requirepass", ADMIN_PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = self.admin()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                admin.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not start (exit {self.proc.poll()})")
                time.sleep(0.02)

    def admin(self):
        return redis.Redis(host="127.0.0.1", port=self.port, password=ADMIN_PASSWORD)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=TIMEOUT)

    def close(self):
        if self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def config(server, pw_file, namespaces="", extra=""):
    return f"""
resource_coordinator:
  gpu: {{devices: 1, nvml_library: ''}}
  redis:
    url: 'redis://127.0.0.1:{server.port}'
    password: '${{file:{pw_file}}}'
    check_interval_ms: 100
{namespaces}{extra}"""


def until(cond, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"never: {what}")


class RedisTestCase(unittest.TestCase):
    NAMESPACES = ""

    def setUp(self):
        self.server = RedisServer()
        self.addCleanup(self.server.close)
        fd, self.pw_file = tempfile.mkstemp(prefix="jbredis-pw-")
        os.write(fd, ADMIN_PASSWORD.encode())
        os.close(fd)
        self.addCleanup(os.unlink, self.pw_file)
        self.d = jbtest.Daemon(config(self.server, self.pw_file, self.NAMESPACES))
        self.addCleanup(self.d.close)
        self.connect()

    def connect(self):
        try:
            self.ch = self.d.channel()
        except grpc.FutureTimeoutError:
            raise AssertionError("jimbotd never answered:\n" + "\n".join(self.d.log[-30:])
                                 + f"\nexit: {self.d.proc.poll()}") from None
        self.addCleanup(self.ch.close)
        self.s = jbtest.Stubs(self.ch)

    def access(self, component):
        """GetRedisAccess, once jimbotd has provisioned the user."""
        def ask():
            try:
                return self.s.infra.GetRedisAccess(pb.GetRedisAccessRequest(component=component),
                                                   timeout=TIMEOUT)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    return None
                raise
        return until(ask, f"access for {component}")

    def client(self, a):
        host, port = a.url[len("redis://"):].rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), username=a.username, password=a.password)

    def status(self):
        return self.s.infra.GetResourceStatus(pb.GetResourceStatusRequest(), timeout=TIMEOUT).redis


class Namespaces(RedisTestCase):
    def test_access_record(self):
        a = self.access("claude")
        self.assertEqual((a.username, a.key_prefix, a.shared_prefix, a.shared_access),
                         ("jimbot-claude", "claude:", "shared:", "readwrite"))
        self.assertEqual(a.url, f"redis://127.0.0.1:{self.server.port}")
        self.assertGreaterEqual(len(a.password), 32)
        # 20 less jimbotd's own, split between claude and analytics.
        self.assertEqual(a.max_connections, 9)
        self.assertNotEqual(self.access("analytics").password, a.password)

    def test_own_prefix_only_and_no_dangerous_commands(self):
        c = self.client(self.access("claude"))
        c.set("claude:advice", "buy")
        self.assertEqual(c.get("claude:advice"), b"buy")
        c.set("shared:round", "3")
        for call in (lambda: c.set("analytics:x", "1"), lambda: c.get("analytics:x"),
                     lambda: c.set("other", "1")):
            with self.assertRaises(redis.exceptions.NoPermissionError):
                call()
        for cmd in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("ACL", "LIST")):
            with self.subTest(cmd=cmd), self.assertRaises(redis.exceptions.NoPermissionError):
                c.execute_command(*cmd)
        a = self.client(self.access("analytics"))
        self.assertEqual(a.get("shared:round"), b"3")
        with self.assertRaises(redis.exceptions.NoPermissionError):
            a.get("claude:advice")
        # Nothing the refused calls tried got through.
        self.assertEqual(self.server.admin().exists("analytics:x", "other"), 0)

    def test_refusals(self):
        for component, code in (("nobody", grpc.StatusCode.NOT_FOUND),
                                ("shared", grpc.StatusCode.NOT_FOUND),
                                ("", grpc.StatusCode.INVALID_ARGUMENT)):
            with self.subTest(component=component), self.assertRaises(grpc.RpcError) as cm:
                self.s.infra.GetRedisAccess(pb.GetRedisAccessRequest(component=component),
                                            timeout=TIMEOUT)
            self.assertEqual(cm.exception.code(), code)

    def test_status(self):
        self.access("claude")
        st = until(lambda: (lambda r: r if r.reachable and r.checked_ms else None)(self.status()),
                   "a reachable, checked Redis")
        self.assertTrue(st.configured)
        self.assertEqual(st.max_connections, 20)
        self.assertEqual([(c.component, c.username, c.key_prefix, c.allowance)
                          for c in st.components],
                         [("analytics", "jimbot-analytics", "analytics:", 9),
                          ("claude", "jimbot-claude", "claude:", 9)])

    def test_credentials_survive_a_restart_of_jimbotd(self):
        before = self.access("claude")
        self.d.stop()
        # Closed before the restart: a new channel would share its subchannel, which may
        # sit in reconnect backoff (test_coordinator's restart does the same).
        self.ch.close()
        self.d.start()
        self.connect()
        after = self.access("claude")
        self.assertEqual((after.username, after.password), (before.username, before.password))
        mode = os.stat(os.path.join(self.d.data_dir, "redis.users")).st_mode & 0o777
        self.assertEqual(mode, 0o600)
        self.assertTrue(self.client(after).ping())

    def test_rotate(self):
        before = self.access("claude")
        old = self.client(before)
        self.assertTrue(old.ping())
        after = self.s.infra.RotateRedisPassword(pb.GetRedisAccessRequest(component="claude"),
                                                 timeout=TIMEOUT)
        self.assertEqual(after.username, before.username)
        self.assertNotEqual(after.password, before.password)
        self.assertEqual(self.access("claude").password, after.password)
        # New connections need the new password; the one already open stays.
        self.assertTrue(self.client(after).ping())
        with self.assertRaisesRegex(AUTH_ERRORS, "WRONGPASS"):
            self.client(before).ping()
        self.assertTrue(old.ping())
        with self.assertRaises(grpc.RpcError) as cm:
            self.s.infra.RotateRedisPassword(pb.GetRedisAccessRequest(component="nobody"),
                                             timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_redis_restarted(self):
        a = self.access("claude")
        self.server.stop()
        st = until(lambda: (lambda r: r if not r.reachable else None)(self.status()),
                   "Redis seen down")
        self.assertNotEqual(st.error, "")
        # The bus keeps working meanwhile.
        self.assertEqual(len(self.s.publish(jbtest.event("any.topic", b"x")).sequences), 1)
        # A Redis without persistence comes back without the ACL users: jimbotd puts them back.
        self.server.start()
        until(lambda: self.status().reachable, "Redis seen up again")
        self.assertTrue(until(lambda: self._ping(a), "the old credentials work again"))

    def _ping(self, a):
        try:
            return self.client(a).ping()
        except redis.exceptions.ConnectionError:
            return False
        except AUTH_ERRORS as e:
            # Until jimbotd has put the users back into the restarted Redis.
            if "WRONGPASS" not in str(e):
                raise
            return False


class ConnectionBudget(RedisTestCase):
    NAMESPACES = """    namespaces:
      claude: {prefix: 'claude:', max_connections: 2}
      shared: 'shared:'
"""

    def test_connections_beyond_the_allowance_are_closed_newest_first(self):
        a = self.access("claude")
        self.assertEqual(a.max_connections, 2)
        conns, mine = [], []
        for i in range(4):
            c = self.client(a)
            c.ping()
            if i < 2:
                # Within the allowance: never ended, so asking its id is safe.
                mine.append(c.client_id())
            conns.append(c)
        st = until(lambda: (lambda r: r if r.components[0].connections_closed >= 2 else None)(
            self.status()), "two connections closed")
        self.assertEqual(st.components[0].allowance, 2)
        self.d.wait_for("redis connection over allowance closed")
        # The two oldest survive; the two newest were ended (a ping on them reconnects, so
        # ask Redis whose connections are left).
        left = [line for line in self.server.admin().execute_command("CLIENT", "LIST")
                .decode().splitlines() if "user=jimbot-claude" in line]
        self.assertEqual(len(left), 2)
        ids = sorted(int(f.split("=")[1]) for line in left for f in line.split()
                     if f.startswith("id="))
        self.assertEqual(ids, sorted(mine))


class NoRedis(unittest.TestCase):
    def test_no_url_no_access(self):
        d = jbtest.Daemon("resource_coordinator:\n  gpu: {devices: 1, nvml_library: ''}\n")
        try:
            ch = d.channel()
            s = jbtest.Stubs(ch)
            with self.assertRaises(grpc.RpcError) as cm:
                s.infra.GetRedisAccess(pb.GetRedisAccessRequest(component="claude"),
                                       timeout=TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
            st = s.infra.GetResourceStatus(pb.GetResourceStatusRequest(), timeout=TIMEOUT)
            self.assertFalse(st.redis.configured)
            ch.close()
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main()
