"""A component's access to the shared Redis that jimbotd provisions.

::

    async with jimbot.Infrastructure(addr) as infra:
        r = await infra.redis("claude")          # a redis.asyncio.Redis
        ns = r.jimbot_access                      # its RedisAccess
        await r.set(ns.key("cache:q1"), b"...")  # the key "claude:cache:q1"
        await r.get(ns.shared_key("game"))       # "shared:game", if shared_access allows
        await r.close()

Design notes:

* jimbotd makes one Redis ACL user per component (``resource_coordinator
  .redis.namespaces``): keys ``<key_prefix>*`` read-write, ``<shared_prefix>*`` as
  ``shared_access`` says, everything else refused with NOPERM by Redis itself.
  ``GetRedisAccess`` hands out that user's credentials and the component's
  connection allowance; :class:`RedisAccess` is that answer.
* The pool of :meth:`RedisAccess.connect` is a
  ``redis.asyncio.BlockingConnectionPool`` capped at ``max_connections``: a
  caller that finds every connection busy waits for one (``pool_timeout``
  seconds, then ``redis.exceptions.ConnectionError``) instead of opening one
  more, which jimbotd would close as over the allowance.
* A connection that broke (Redis restarted, or jimbotd closed it) is
  reconnected on the next command: the pool retries a command that failed
  with ``ConnectionError`` ``retries`` times with a short backoff. As with
  any redis-py retry, a command cut off in flight may have run once already.
* ``redis`` (Debian's python3-redis, 4.3 or later) is imported only by
  :meth:`RedisAccess.connect`: the rest of the package works without it.

Nothing here is thread-safe; the client runs on the caller's event loop.
"""

from typing import Optional, Union
from urllib.parse import urlsplit

from .errors import InvalidArgumentError, JimbotError

__all__ = ["RedisAccess", "DEFAULT_POOL_TIMEOUT_S", "DEFAULT_RETRIES"]

#: How long a command waits for a free pooled connection (seconds).
DEFAULT_POOL_TIMEOUT_S = 20.0
#: How many times a command that failed with ConnectionError is tried again.
DEFAULT_RETRIES = 3

Key = Union[str, bytes]


def _join(prefix: str, name: Key) -> Key:
    if isinstance(name, bytes):
        return prefix.encode() + name
    if isinstance(name, str):
        return prefix + name
    raise InvalidArgumentError(f"a Redis key is str or bytes, not {type(name).__name__}")


class RedisAccess:
    """How ``component`` reaches the shared Redis (``GetRedisAccess``'s answer).

    Attributes: ``component``, ``url`` (``redis://HOST:PORT``,
    ``rediss://HOST:PORT`` or ``unix:PATH``; no credentials), ``host``, ``port``, ``username``, ``password`` (never in
    ``repr``), ``key_prefix`` (``"claude:"``), ``max_connections`` (the
    component's allowance), ``shared_prefix`` (``"shared:"``) and
    ``shared_access`` (``"readwrite"``, ``"read"`` or ``"none"``).
    """

    __slots__ = ("component", "url", "username", "password", "key_prefix", "max_connections",
                 "shared_prefix", "shared_access")

    def __init__(self, component: str, url: str, username: str, password: str,
                 key_prefix: str, max_connections: int, shared_prefix: str = "",
                 shared_access: str = "none"):
        self.component = component
        self.url = url
        self.username = username
        self.password = password
        self.key_prefix = key_prefix
        self.max_connections = max_connections
        self.shared_prefix = shared_prefix
        self.shared_access = shared_access

    @classmethod
    def from_message(cls, component: str, msg) -> "RedisAccess":
        """From a ``jimbot.infra.v1.RedisAccess`` message."""
        return cls(component, msg.url, msg.username, msg.password, msg.key_prefix,
                   msg.max_connections, msg.shared_prefix, msg.shared_access or "none")

    @property
    def host(self) -> str:
        """The server's host ("" for a unix socket)."""
        return "" if self.url.startswith("unix:") else urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        """The server's port (0 for a unix socket)."""
        return 0 if self.url.startswith("unix:") else urlsplit(self.url).port or 6379

    def _pool_url(self) -> str:
        """``url`` as redis-py reads it: jimbotd's ``unix:PATH`` is ``unix://PATH`` there."""
        if self.url.startswith("unix:") and not self.url.startswith("unix://"):
            return "unix://" + self.url[len("unix:"):]
        return self.url

    # -- keys -----------------------------------------------------------------------------------

    def key(self, name: Key) -> Key:
        """``name`` in this component's namespace: ``key("x")`` is
        ``"claude:x"`` (bytes in, bytes out)."""
        return _join(self.key_prefix, name)

    def shared_key(self, name: Key) -> Key:
        """``name`` under the common prefix (``"shared:x"``). Raises
        :class:`~jimbot.errors.InvalidArgumentError` when ``shared_access``
        is ``"none"``: Redis would refuse every use of it."""
        if self.shared_access == "none" or not self.shared_prefix:
            raise InvalidArgumentError(f"'{self.component}' has no access to the shared keys")
        return _join(self.shared_prefix, name)

    def local(self, key: Key) -> Key:
        """The inverse of :meth:`key`: ``local("claude:x")`` is ``"x"``;
        InvalidArgumentError for a key outside the namespace."""
        prefix = self.key_prefix.encode() if isinstance(key, bytes) else self.key_prefix
        if not isinstance(key, (str, bytes)) or not key.startswith(prefix):
            raise InvalidArgumentError(f"{key!r} is not in the namespace '{self.key_prefix}'")
        return key[len(prefix):]

    # -- the client -----------------------------------------------------------------------------

    def connect(self, *, pool_timeout: Optional[float] = DEFAULT_POOL_TIMEOUT_S,
                retries: int = DEFAULT_RETRIES, max_connections: Optional[int] = None,
                **kwargs):
        """A ``redis.asyncio.Redis`` logged in as this component, whose pool
        holds at most ``max_connections`` connections (default, and at most,
        the allowance; 0 from the daemon means 1). ``pool_timeout`` bounds
        the wait for a free connection (None: no bound); ``retries`` is how
        many times a command is tried again after a ``ConnectionError``
        (0: never). Other keyword arguments go to the pool's connections
        (``decode_responses``, ``socket_timeout``, ``client_name``...).
        The caller closes it: ``await r.close()`` (or ``async with``), which
        also disconnects the pool. ``r.jimbot_access`` is this object.
        Raises :class:`~jimbot.errors.JimbotError` when redis-py is not
        installed (Debian: python3-redis)."""
        try:
            import redis.asyncio as aioredis
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.asyncio.retry import Retry
        except ImportError as e:
            raise JimbotError(f"redis-py is not installed ({e}); Debian: apt-get install "
                              "python3-redis") from None
        allowance = max(1, self.max_connections)
        cap = allowance if max_connections is None else max(1, min(max_connections, allowance))
        if retries > 0:
            kwargs.setdefault("retry_on_error", [RedisConnectionError])
            kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=1.0, base=0.05), retries))
        pool = aioredis.BlockingConnectionPool.from_url(
            self._pool_url(), username=self.username, password=self.password, max_connections=cap,
            timeout=pool_timeout, **kwargs)
        client = aioredis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True   # close() disconnects the pool too
        client.jimbot_access = self
        return client

    def __repr__(self) -> str:
        return (f"RedisAccess(component={self.component!r}, url={self.url!r}, "
                f"username={self.username!r}, key_prefix={self.key_prefix!r}, "
                f"max_connections={self.max_connections}, shared_prefix={self.shared_prefix!r}, "
                f"shared_access={self.shared_access!r})")

    def __eq__(self, other) -> bool:
        return isinstance(other, RedisAccess) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__)


class RedisApi:
    """``redis()`` on top of a ``redis_access()`` (shared by
    :class:`jimbot.Infrastructure` and :class:`jimbot.testing.MockInfrastructure`)."""

    async def redis_access(self, component: str) -> RedisAccess:
        raise NotImplementedError

    async def redis(self, component: str, **kwargs):
        """``await infra.redis("claude")``: a ``redis.asyncio.Redis`` with the
        component's credentials and a pool capped at its allowance
        (:meth:`RedisAccess.connect`, which takes the same keyword
        arguments); its ``jimbot_access`` attribute is the
        :class:`RedisAccess`, for the key helpers. Raises what
        :meth:`redis_access` raises."""
        access = await self.redis_access(component)
        return access.connect(**kwargs)
