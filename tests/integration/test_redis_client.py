"""The clients' side of the shared Redis: jimbot.Infrastructure.redis_access()/redis(),
jimbot.RedisAccess, the C client's jb_client_redis_access_get() and the Redis part of
jb_client_resource_status (through jimbotctl `redis access`, `redis status` and `status`).

Two real things and one scripted one:

* a real redis-server (7.0), started by the test on a free loopback port in a temporary folder
  (`--save '' --appendonly no`), with an ACL user that the test creates itself through redis-cli,
  as jimbotd would (`~claude:* %R~shared:*`, dangerous commands off): so the credentials, the
  NOPERM refusals, the pool's cap at the allowance, the key helpers and the reconnection after
  a Redis restart are proven against Redis itself;
* a scripted Infrastructure service in this process (fake_infra.FakeInfra plus GetRedisAccess and
  a RedisStatus in GetResourceStatus), which hands out that user and answers the contract's
  errors on demand (NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE).

RealDaemonRedisTest runs the clients against the real jimbotd provisioning a redis-server of its own
(its users, allowance, status, and both restarting); the daemon's own rules are test_redis.py's.
Timeouts only keep a broken build from hanging the suite; nothing here asserts durations.
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jimbot  # noqa: E402
from jimbot import errors  # noqa: E402
from jimbot.infra.v1 import infrastructure_pb2 as pb  # noqa: E402
from jimbot.testing import MockInfrastructure  # noqa: E402
from fake_infra import FakeInfra  # noqa: E402
from jbtest import Daemon  # noqa: E402

import redis.asyncio  # noqa: E402
import redis.exceptions  # noqa: E402

SOURCE = os.environ.get("JB_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("JB_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("JB_BIN_DIR", os.path.join(BUILD, "bin"))
JIMBOTCTL = os.path.join(BIN, "jimbotctl")
PROBE = os.path.join(BUILD, "tests", "client_probe")
TIMEOUT = 30.0
ADMIN_PASSWORD = "admin-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(predicate, what, timeout=TIMEOUT):
    """Waits for predicate() to be true (checked every 20 ms); its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"never: {what}")


class RedisServer:
    """redis-server on loopback in a temporary folder, with an admin password; restartable on
    the same port. `cli(...)` runs redis-cli as the admin."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="jbredis-")
        self.socket = os.path.join(self.tmp, "redis.sock")
        self.port = None
        self.proc = None
        self.start()

    def start(self):
        """Starts it (again on the same port once it has one)."""
        fixed = self.port is not None
        for _ in range(1 if fixed else 20):   # a free port may be taken before redis binds it
            port = self.port if fixed else free_port()
            self.log = open(os.path.join(self.tmp, "redis.log"), "a")
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.tmp, "--requirepass", ADMIN_PASSWORD,
                 "--unixsocket", self.socket, "--unixsocketperm", "700"],
                stdout=self.log, stderr=subprocess.STDOUT)
            self.port = port
            if self._wait_up():
                return
            self.proc.wait(timeout=TIMEOUT)
            self.log.close()
            self.port = self.port if fixed else None
        raise AssertionError("redis-server did not start")

    def _wait_up(self):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            r = subprocess.run(self._cli_argv("PING"), capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                return True
            time.sleep(0.02)
        return False

    def _cli_argv(self, *args):
        return ["redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", str(self.port),
                "--user", "default", "--pass", ADMIN_PASSWORD, *args]

    def cli(self, *args):
        r = subprocess.run(self._cli_argv(*args), capture_output=True, text=True,
                           timeout=TIMEOUT)
        if r.returncode != 0 or r.stdout.startswith("ERR"):
            raise AssertionError(f"redis-cli {args}: {r.stdout} {r.stderr}")
        return r.stdout.strip()

    def clients(self, user):
        """The CLIENT LIST lines of @user's connections."""
        return [line for line in self.cli("CLIENT", "LIST").splitlines()
                if f" user={user} " in f" {line} "]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=TIMEOUT)
        self.log.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def make_user(self, name, password, prefix, shared="read"):
        """An ACL user as jimbotd provisions one: its prefix read-write, shared:* as @shared."""
        shared_rule = {"readwrite": "~shared:*", "read": "%R~shared:*", "none": None}[shared]
        rules = ["reset", "on", f">{password}", f"~{prefix}*", "resetchannels", "+@all",
                 "-@dangerous", "-@admin"]
        if shared_rule:
            rules.insert(4, shared_rule)
        self.cli("ACL", "SETUSER", name, *rules)


class FakeRedisInfra(FakeInfra):
    """FakeInfra plus GetRedisAccess and the Redis part of GetResourceStatus. `access` maps
    components to RedisAccess messages; `mode` is "ok", "unconfigured" (FAILED_PRECONDITION)
    or "unprovisioned" (UNAVAILABLE)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.access = {}
        self.mode = "ok"
        self.redis_status = pb.RedisStatus()
        self.asked = []

    def GetRedisAccess(self, request, context):
        self.asked.append(request.component)
        if not request.component:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty component")
        if self.mode == "unconfigured":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "no Redis configured (resource_coordinator.redis.url is empty)")
        if request.component not in self.access:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no Redis namespace for component '{request.component}'")
        if self.mode == "unprovisioned":
            context.abort(grpc.StatusCode.UNAVAILABLE, "Redis not provisioned yet: "
                          "connection refused")
        return self.access[request.component]

    def GetResourceStatus(self, request, context):
        st = super().GetResourceStatus(request, context)
        st.redis.CopyFrom(self.redis_status)
        return st


def jimbotctl(addr, *args):
    return subprocess.run([JIMBOTCTL, "--addr", addr, *args], capture_output=True, text=True,
                          timeout=TIMEOUT)


class RedisClientTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer()

    @classmethod
    def tearDownClass(cls):
        cls.redis.close()

    def setUp(self):
        self.redis.cli("FLUSHALL")
        self.redis.make_user("jimbot-claude", "pw-claude", "claude:", shared="read")
        self.redis.make_user("jimbot-analytics", "pw-analytics", "analytics:", shared="readwrite")
        self.fake = FakeRedisInfra()
        self.fake.access = {
            "claude": pb.RedisAccess(url=self.redis.url, username="jimbot-claude",
                                     password="pw-claude", key_prefix="claude:",
                                     max_connections=2, shared_prefix="shared:",
                                     shared_access="read"),
            "analytics": pb.RedisAccess(url=self.redis.url, username="jimbot-analytics",
                                        password="pw-analytics", key_prefix="analytics:",
                                        max_connections=3, shared_prefix="shared:",
                                        shared_access="readwrite"),
        }
        self.addCleanup(self.fake.close)

    async def asyncSetUp(self):
        self.infra = jimbot.Infrastructure(self.fake.address, timeout_s=TIMEOUT)

    async def asyncTearDown(self):
        await self.infra.close()

    async def client(self, component, **kw):
        r = await self.infra.redis(component, **kw)
        self.addAsyncCleanup(r.close)
        return r

    # ---- the access record -------------------------------------------------------------------

    async def test_access_record_and_key_helpers(self):
        a = await self.infra.redis_access("claude")
        self.assertIsInstance(a, jimbot.RedisAccess)
        self.assertEqual((a.component, a.url, a.username, a.password, a.key_prefix,
                          a.max_connections, a.shared_prefix, a.shared_access),
                         ("claude", self.redis.url, "jimbot-claude", "pw-claude", "claude:", 2,
                          "shared:", "read"))
        self.assertEqual((a.host, a.port), ("127.0.0.1", self.redis.port))
        self.assertNotIn("pw-claude", repr(a))
        self.assertEqual(a.key("cache:1"), "claude:cache:1")
        self.assertEqual(a.key(b"cache:1"), b"claude:cache:1")
        self.assertEqual(a.shared_key("game"), "shared:game")
        self.assertEqual(a.local("claude:cache:1"), "cache:1")
        self.assertEqual(a.local(b"claude:x"), b"x")
        with self.assertRaises(errors.InvalidArgumentError):
            a.local("analytics:x")
        with self.assertRaises(errors.InvalidArgumentError):
            a.key(42)
        none = jimbot.RedisAccess("x", a.url, "u", "p", "x:", 1, "shared:", "none")
        with self.assertRaises(errors.InvalidArgumentError):
            none.shared_key("game")

    async def test_errors_of_the_contract(self):
        with self.assertRaises(errors.NotFoundError) as cm:
            await self.infra.redis_access("nobody")
        self.assertIn("nobody", str(cm.exception))
        with self.assertRaises(errors.InvalidArgumentError):
            await self.infra.redis_access("")
        self.assertEqual(self.fake.asked, ["nobody"])      # "" never left the client
        self.fake.mode = "unconfigured"
        with self.assertRaises(errors.FailedPreconditionError):
            await self.infra.redis("claude")
        self.fake.mode = "unprovisioned"
        with self.assertRaises(errors.UnavailableError):
            await self.infra.redis("claude")

    # ---- against Redis -----------------------------------------------------------------------

    async def test_own_prefix_works_and_the_rest_is_noperm(self):
        r = await self.client("claude")
        ns = r.jimbot_access
        self.assertTrue(await r.set(ns.key("answer"), b"42"))
        self.assertEqual(await r.get(ns.key("answer")), b"42")
        self.assertEqual(self.redis.cli("GET", "claude:answer"), "42")
        self.assertEqual(await r.acl_whoami(), "jimbot-claude")
        with self.assertRaises(redis.exceptions.NoPermissionError):
            await r.set("analytics:answer", b"1")
        with self.assertRaises(redis.exceptions.NoPermissionError):
            await r.get("elsewhere")
        with self.assertRaises((redis.exceptions.NoPermissionError,
                                redis.exceptions.ResponseError)):
            await r.flushall()
        self.assertEqual(self.redis.cli("EXISTS", "analytics:answer"), "0")

    async def test_shared_read_and_readwrite(self):
        reader = await self.client("claude")            # shared_access read
        writer = await self.client("analytics")         # shared_access readwrite
        await writer.set(writer.jimbot_access.shared_key("game"), b"ante 3")
        self.assertEqual(await reader.get(reader.jimbot_access.shared_key("game")), b"ante 3")
        with self.assertRaises(redis.exceptions.NoPermissionError):
            await reader.set(reader.jimbot_access.shared_key("game"), b"mine")
        self.assertEqual(self.redis.cli("GET", "shared:game"), "ante 3")

    async def test_pool_is_capped_at_the_allowance(self):
        r = await self.client("claude", decode_responses=True)   # allowance 2
        q = r.jimbot_access.key("q")
        pops = [asyncio.ensure_future(r.blpop(q, 0)) for _ in range(3)]
        # Two connections block in BLPOP; the third call waits for one of them.
        await asyncio.to_thread(
            poll, lambda: sum("cmd=blpop" in c for c in self.redis.clients("jimbot-claude")) == 2,
            "two BLPOPs of jimbot-claude")
        self.assertEqual(len(self.redis.clients("jimbot-claude")), 2)
        self.assertEqual(sum(p.done() for p in pops), 0)
        self.redis.cli("RPUSH", "claude:q", "a", "b", "c")
        got = await asyncio.wait_for(asyncio.gather(*pops), TIMEOUT)
        self.assertEqual(sorted(v for _, v in got), ["a", "b", "c"])
        self.assertLessEqual(len(self.redis.clients("jimbot-claude")), 2)

    async def test_pool_timeout_when_every_connection_is_busy(self):
        r = await self.client("claude", pool_timeout=0.2)
        q = r.jimbot_access.key("q")
        pops = [asyncio.ensure_future(r.blpop(q, 0)) for _ in range(2)]
        await asyncio.to_thread(
            poll, lambda: sum("cmd=blpop" in c for c in self.redis.clients("jimbot-claude")) == 2,
            "two BLPOPs of jimbot-claude")
        with self.assertRaises(redis.exceptions.ConnectionError):
            await r.get(r.jimbot_access.key("x"))
        self.redis.cli("RPUSH", "claude:q", "a", "b")
        await asyncio.wait_for(asyncio.gather(*pops), TIMEOUT)

    async def test_a_smaller_cap_but_never_a_larger_one(self):
        r = await self.client("analytics", max_connections=1)
        self.assertEqual(r.connection_pool.max_connections, 1)
        r2 = await self.client("analytics", max_connections=50)
        self.assertEqual(r2.connection_pool.max_connections, 3)

    async def test_wrong_password_is_refused_by_redis(self):
        self.fake.access["claude"].password = "not-the-password"
        r = await self.client("claude")
        # redis-py 4.3 reads WRONGPASS after AUTH user pass as a ResponseError.
        with self.assertRaisesRegex(redis.exceptions.RedisError, "WRONGPASS"):
            await r.ping()

    async def test_redis_restart_is_survived(self):
        r = await self.client("claude")
        await r.set("claude:before", b"1")
        self.redis.stop()
        with self.assertRaises(redis.exceptions.ConnectionError):
            await r.get("claude:before")
        self.redis.start()                      # same port; an empty server without the user
        self.redis.make_user("jimbot-claude", "pw-claude", "claude:")   # as jimbotd re-provisions
        self.assertTrue(await r.set("claude:after", b"2"))
        self.assertEqual(self.redis.cli("GET", "claude:after"), "2")

    async def test_a_stale_connection_is_retried(self):
        r = await self.client("claude")
        await r.ping()
        self.redis.cli("CLIENT", "KILL", "USER", "jimbot-claude")   # as jimbotd ends one
        self.assertEqual(await r.incr("claude:n"), 1)
        self.assertEqual(self.redis.cli("GET", "claude:n"), "1")

    async def test_unix_socket_url(self):
        self.fake.access["claude"].url = f"unix:{self.redis.socket}"   # jimbotd's form
        r = await self.client("claude")
        self.assertEqual((r.jimbot_access.host, r.jimbot_access.port), ("", 0))
        await r.set(r.jimbot_access.key("unix"), b"1")
        self.assertEqual(self.redis.cli("GET", "claude:unix"), "1")
        out = jimbotctl(self.fake.address, "redis", "access", "claude", "--uri")
        self.assertEqual(out.returncode, 1)
        self.assertIn("no redis-cli URI form", out.stderr)

    async def test_mock_infrastructure(self):
        mock = MockInfrastructure(redis={"claude": dict(
            url=self.redis.url, username="jimbot-claude", password="pw-claude", key_prefix="claude:",
            max_connections=1, shared_prefix="shared:", shared_access="read")})
        r = await mock.redis("claude")
        self.addAsyncCleanup(r.close)
        await r.set(r.jimbot_access.key("m"), b"ok")
        self.assertEqual(self.redis.cli("GET", "claude:m"), "ok")
        with self.assertRaises(errors.NotFoundError):
            await mock.redis_access("nobody")
        with self.assertRaises(errors.FailedPreconditionError):
            await MockInfrastructure().redis_access("claude")

    # ---- jimbotctl and the C client ------------------------------------------------------------

    def test_cli_access_hides_the_password_unless_asked(self):
        r = jimbotctl(self.fake.address, "redis", "access", "claude")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("pw-claude", r.stdout)
        self.assertIn("(hidden", r.stdout)
        self.assertRegex(r.stdout, r"username\s+jimbot-claude")
        self.assertRegex(r.stdout, r"key_prefix\s+claude:")
        self.assertRegex(r.stdout, r"max_connections\s+2")
        r = jimbotctl(self.fake.address, "redis", "access", "claude", "--show-password")
        self.assertRegex(r.stdout, r"password\s+pw-claude")
        r = jimbotctl(self.fake.address, "redis", "access", "claude", "--json")
        doc = json.loads(r.stdout)
        self.assertNotIn("password", doc)
        self.assertEqual(doc, {"component": "claude", "url": self.redis.url,
                               "username": "jimbot-claude", "keyPrefix": "claude:",
                               "maxConnections": 2, "sharedPrefix": "shared:",
                               "sharedAccess": "read"})
        r = jimbotctl(self.fake.address, "redis", "access", "claude", "--json", "--show-password")
        self.assertEqual(json.loads(r.stdout)["password"], "pw-claude")

    def test_cli_uri_works_with_redis_cli(self):
        self.fake.access["claude"].password = "p@ss:w/rd"      # escaped in the URI
        self.redis.make_user("jimbot-claude", "p@ss:w/rd", "claude:")
        r = jimbotctl(self.fake.address, "redis", "access", "claude", "--uri")
        self.assertEqual(r.returncode, 0, r.stderr)
        uri = r.stdout.strip()
        self.assertEqual(uri, f"redis://jimbot-claude:p%40ss%3Aw%2Frd@127.0.0.1:{self.redis.port}")
        out = subprocess.run(["redis-cli", "--no-auth-warning", "-u", uri, "SET", "claude:u",
                              "1"], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(out.stdout.strip(), "OK", out.stderr)
        out = subprocess.run(["redis-cli", "--no-auth-warning", "-u", uri, "SET", "other", "1"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        self.assertIn("NOPERM", out.stdout + out.stderr)

    def test_c_client_async(self):
        r = subprocess.run([PROBE, self.fake.address, "redis-async", "claude"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ["redis", self.redis.url, "jimbot-claude", "pw-claude",
                                            "claude:", "2", "shared:", "read", "claude"])
        r = subprocess.run([PROBE, self.fake.address, "redis-async", "nobody"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 1)
        self.assertIn("ENOENT", r.stdout + r.stderr)

    def test_cli_errors(self):
        r = jimbotctl(self.fake.address, "redis", "access", "nobody")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)
        r = jimbotctl(self.fake.address, "redis", "access")
        self.assertEqual(r.returncode, 2)
        r = jimbotctl(self.fake.address, "redis", "access", "claude", "--uri", "--json")
        self.assertEqual(r.returncode, 2)
        r = jimbotctl(self.fake.address, "redis", "rotate")
        self.assertEqual(r.returncode, 2)
        self.fake.mode = "unconfigured"
        r = jimbotctl(self.fake.address, "redis", "access", "claude")
        self.assertEqual(r.returncode, 1)
        self.assertIn("FAILED_PRECONDITION", r.stderr)
        self.fake.mode = "unprovisioned"
        r = jimbotctl(self.fake.address, "redis", "access", "claude")
        self.assertEqual(r.returncode, 3)
        self.assertIn("UNAVAILABLE", r.stderr)
        r = jimbotctl(f"127.0.0.1:{free_port()}", "redis", "access", "claude")
        self.assertEqual(r.returncode, 3)

    def test_cli_status_shows_redis(self):
        r = jimbotctl(self.fake.address, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("\nRedis\nnot configured", r.stdout)
        self.fake.redis_status = pb.RedisStatus(
            configured=True, url=self.redis.url, reachable=True,
            checked_ms=int(time.time() * 1000), connections=4, max_connections=20,
            components=[pb.RedisComponentStatus(component="claude", username="jimbot-claude",
                                                key_prefix="claude:", connections=3, allowance=2,
                                                connections_closed=7),
                        pb.RedisComponentStatus(component="analytics", username="jimbot-analytics",
                                                key_prefix="analytics:", connections=1,
                                                allowance=3)])
        for args in (("status",), ("redis", "status")):
            r = jimbotctl(self.fake.address, *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"url             {self.redis.url}", r.stdout)
            self.assertIn("state           reachable", r.stdout)
            self.assertRegex(r.stdout, r"connections\s+4 of 20 \(checked \d+s ago\)")
            self.assertRegex(r.stdout, r"claude\s+jimbot-claude\s+claude:\s+3/2\s+7")
            self.assertRegex(r.stdout, r"analytics\s+jimbot-analytics\s+analytics:\s+1/3\s+0")
        self.fake.redis_status.reachable = False
        self.fake.redis_status.error = "connection refused"
        r = jimbotctl(self.fake.address, "redis", "status")
        self.assertIn("state           unreachable: connection refused", r.stdout)
        r = jimbotctl(self.fake.address, "redis", "status", "--json")
        doc = json.loads(r.stdout)
        self.assertEqual(doc["redis"]["components"][0]["connectionsClosed"], "7")
        self.assertNotIn("password", r.stdout)


class RealDaemonWithoutRedisTest(unittest.IsolatedAsyncioTestCase):
    """The real jimbotd with resource_coordinator.redis.url empty (make run's default)."""

    def setUp(self):
        self.daemon = Daemon("")
        self.addCleanup(self.daemon.close)

    async def test_no_redis_configured(self):
        async with jimbot.Infrastructure(self.daemon.address, timeout_s=TIMEOUT) as infra:
            with self.assertRaises(errors.FailedPreconditionError):
                await infra.redis_access("claude")
            with self.assertRaises(errors.FailedPreconditionError):
                await infra.redis("claude")
            st = await infra.status()
            self.assertFalse(st.redis.configured)
        r = jimbotctl(self.daemon.address, "redis", "access", "claude")
        self.assertEqual(r.returncode, 1)
        self.assertIn("FAILED_PRECONDITION", r.stderr)
        r = jimbotctl(self.daemon.address, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("\nRedis\nnot configured", r.stdout)


class RealDaemonRedisTest(unittest.IsolatedAsyncioTestCase):
    """The real jimbotd provisioning a real redis-server: the clients with the users it made.
    (Raw Redis and gRPC against the daemon's rules, NOPERM, budget kills and restarts from the
    daemon's side, are test_redis.py's.)"""

    def setUp(self):
        self.redis = RedisServer()
        self.addCleanup(self.redis.close)
        self.daemon = Daemon(
            "resource_coordinator:\n"
            "  redis:\n"
            f"    url: {self.redis.url}\n"
            f"    password: {ADMIN_PASSWORD}\n"
            "    max_connections: 10\n"
            "    check_interval_ms: 100\n"
            "    shared_access: read\n"
            "    namespaces:\n"
            "      claude: {prefix: 'claude:', max_connections: 2}\n"
            "      analytics: 'analytics:'\n"
            "      shared: 'shared:'\n")
        self.addCleanup(self.daemon.close)

    async def provisioned(self, infra, component="claude"):
        """GetRedisAccess once jimbotd has provisioned the users (UNAVAILABLE until then)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return await infra.redis_access(component)
            except errors.UnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def status_where(self, infra, predicate, what):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            st = await infra.status()
            if predicate(st.redis):
                return st.redis
            await asyncio.sleep(0.05)
        raise AssertionError(f"never: {what}")

    async def test_clients_with_the_daemons_users(self):
        async with jimbot.Infrastructure(self.daemon.address, timeout_s=TIMEOUT) as infra:
            a = await self.provisioned(infra)
            self.assertEqual((a.url, a.key_prefix, a.max_connections, a.shared_prefix,
                              a.shared_access), (self.redis.url, "claude:", 2, "shared:", "read"))
            self.assertTrue(a.username)
            self.assertGreaterEqual(len(a.password), 32)
            r = await infra.redis("claude", decode_responses=True)
            self.addAsyncCleanup(r.close)
            await r.set(a.key("x"), "1")
            self.assertEqual(self.redis.cli("GET", "claude:x"), "1")
            with self.assertRaises(redis.exceptions.NoPermissionError):
                await r.set("analytics:x", "1")
            with self.assertRaises(redis.exceptions.NoPermissionError):
                await r.set(a.shared_key("x"), "1")
            self.redis.cli("SET", "shared:x", "s")
            self.assertEqual(await r.get(a.shared_key("x")), "s")
            with self.assertRaises(errors.NotFoundError):
                await infra.redis_access("nobody")
            with self.assertRaises(errors.NotFoundError):
                await infra.redis_access("shared")      # the common prefix, not a component

            # The pool at its allowance is never over it: jimbotd's checks leave it alone.
            pops = [asyncio.ensure_future(r.blpop(a.key("q"), 0)) for _ in range(3)]
            await asyncio.to_thread(
                poll, lambda: sum("cmd=blpop" in c for c in self.redis.clients(a.username)) == 2,
                "two BLPOPs")
            first = (await infra.status()).redis.checked_ms
            st = await self.status_where(infra, lambda rs: rs.checked_ms > first + 300,
                                         "three checks later")
            claude = next(c for c in st.components if c.component == "claude")
            self.assertEqual((claude.allowance, claude.connections_closed), (2, 0))
            self.assertEqual(claude.username, a.username)
            self.redis.cli("RPUSH", "claude:q", "a", "b", "c")
            got = await asyncio.wait_for(asyncio.gather(*pops), TIMEOUT)
            self.assertEqual(sorted(v for _, v in got), ["a", "b", "c"])

            # jimbotctl and the C client see the same.
            out = jimbotctl(self.daemon.address, "redis", "access", "claude", "--uri")
            self.assertEqual(out.returncode, 0, out.stderr)
            cli = subprocess.run(["redis-cli", "--no-auth-warning", "-u", out.stdout.strip(),
                                  "SET", "analytics:y", "1"], capture_output=True, text=True,
                                 timeout=TIMEOUT)
            self.assertIn("NOPERM", cli.stdout + cli.stderr)
            out = jimbotctl(self.daemon.address, "status")
            self.assertIn(f"url             {self.redis.url}", out.stdout)
            self.assertIn("state           reachable", out.stdout)
            self.assertRegex(out.stdout, rf"claude\s+{a.username}\s+claude:\s+\d/2\s+0")

    async def test_rotation_from_python_and_jimbotctl(self):
        async with jimbot.Infrastructure(self.daemon.address, timeout_s=TIMEOUT) as infra:
            before = await self.provisioned(infra)
            r = await infra.redis("claude")
            self.addAsyncCleanup(r.close)
            await r.set(before.key("k"), "1")
            after = await infra.rotate_redis_password("claude")
            self.assertEqual(after.username, before.username)
            self.assertNotEqual(after.password, before.password)
            self.assertEqual((await infra.redis_access("claude")).password, after.password)
            # The connection already open stays authenticated.
            self.assertEqual(await r.get(before.key("k")), b"1")
            with self.assertRaises(errors.NotFoundError):
                await infra.rotate_redis_password("nobody")
            out = jimbotctl(self.daemon.address, "redis", "rotate", "claude", "--json",
                            "--show-password")
            self.assertEqual(out.returncode, 0, out.stderr)
            third = json.loads(out.stdout)
            self.assertNotIn(third["password"], (before.password, after.password))
            fresh = redis.Redis(host="127.0.0.1", port=self.redis.port,
                                username=third["username"], password=third["password"])
            self.assertEqual(fresh.get("claude:k"), b"1")
            fresh.close()

    async def test_daemon_and_redis_restarts(self):
        async with jimbot.Infrastructure(self.daemon.address, timeout_s=TIMEOUT) as infra:
            a = await self.provisioned(infra)
            r = await infra.redis("claude")
            self.addAsyncCleanup(r.close)
            await r.set(a.key("n"), b"1")
            # jimbotd restarts: the same credentials, and the client keeps working throughout.
            await asyncio.to_thread(self.daemon.stop)
            self.assertEqual(await r.incr(a.key("n")), 2)
            await asyncio.to_thread(self.daemon.start)
            self.assertEqual(await self.provisioned(infra), a)
            self.assertEqual(await r.incr(a.key("n")), 3)
            # Redis restarts (empty, without the users): jimbotd provisions them again.
            await asyncio.to_thread(self.redis.stop)
            with self.assertRaises(redis.exceptions.ConnectionError):
                await r.get(a.key("n"))
            await asyncio.to_thread(self.redis.start)
            await self.status_where(infra, lambda rs: rs.reachable, "Redis reachable again")
            self.assertTrue(await r.set(a.key("n"), b"10"))
            self.assertEqual(self.redis.cli("GET", "claude:n"), "10")


if __name__ == "__main__":
    unittest.main()
