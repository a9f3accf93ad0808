"""Every Redis client of the process, made here under one timeout policy, whatever Redis is:

    plain      one server (redis_url)
    cluster    a Redis Cluster (redis_url names any node; detected at start, or redis_cluster)
    sentinel   a Sentinel-guarded primary (redis_sentinel), followed through failovers

    shared     the clients for commands (tracking, claims, tenancy, webhooks): bounded pools, so
               a burst waits for a free connection instead of opening one per call
    reader()   a dedicated client for one blocking read loop (`XREAD BLOCK`), whose socket
               timeout exceeds the block time, so a quiet stream is never mistaken for a dead
               Redis (redis/redis-py #2663, #3138)

On a cluster, a command with several keys must keep them in one slot: `slot_groups` splits
stream keys by slot (one blocking read per group), and `run_scripts` runs a batch of scripts
as one pipeline on one server, or concurrently, each on its own node, on a cluster. Nothing
connects before `open()`, which only looks (briefly) whether redis_url names a cluster: the
sidecar starts while Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from collections.abc import Sequence
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from .config import Settings
from .faults import REDIS_FAULTS as REDIS_FAULTS
from .metrics import Metrics
from .tasks import cancelling, checkpoint

logger = logging.getLogger(__name__)

ROLE_CHECK_S = 1.0  # how often a loop on a Sentinel-guarded primary asks where it is


CONNECT_TIMEOUT_S = 2.0  # TCP (and TLS) connect to Redis
COMMAND_TIMEOUT_S = 5.0  # longest a (non-blocking) command may take before it counts as a fault
BLOCKING_MARGIN_S = 5.0  # a blocking read's socket timeout is its block time plus this
POOL_SIZE = 64  # connections shared by every request and background loop (per node)
POOL_WAIT_S = 2.0  # longest a command waits for a free pooled connection
HEALTH_CHECK_S = 10  # an idle pooled connection is PINGed before reuse after this long
PROBE_EVERY_S = 1.0  # how often the health probe PINGs Redis
PROBE_TIMEOUT_S = 1.0
DETECT_TIMEOUT_S = 1.0  # how long the start waits to learn whether redis_url is a cluster

Mode = Literal["plain", "cluster", "sentinel"]
Client = Redis | RedisCluster


class Backoff:
    """Exponential delays with ±20 % jitter, up to a cap: reconnect attempts of many
    processes spread out instead of hammering a Redis that is coming back."""

    def __init__(self, initial_s: float, cap_s: float) -> None:
        self.initial_s, self.cap_s = initial_s, cap_s
        self._next = initial_s

    def next(self) -> float:
        """The delay before the next attempt (and grow the one after)."""
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._next = self.initial_s


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's pool, bounded and waiting for a free connection like the plain one."""


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Auth and TLS options every client of `settings` shares."""
    kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S}
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    tls = settings.redis_tls
    if tls is not None:
        kwargs["ssl_ca_certs"] = tls.ca_file
        kwargs["ssl_certfile"] = tls.cert_file
        kwargs["ssl_keyfile"] = tls.key_file
        kwargs["ssl_check_hostname"] = tls.check_hostname
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return kwargs


def tls_url(settings: Settings) -> bool:
    """True for a `rediss://` URL (TLS)."""
    return (settings.redis_url or "").startswith("rediss://")


async def detect_cluster(url: str, kwargs: dict[str, Any]) -> bool | None:
    """Whether the node `url` names runs in cluster mode; None when it cannot be asked now."""
    client: Redis = Redis.from_url(url, socket_timeout=DETECT_TIMEOUT_S, **kwargs)
    try:
        async with asyncio.timeout(DETECT_TIMEOUT_S * 2):
            info = await client.info("cluster")
        return bool(info.get("cluster_enabled"))
    except REDIS_FAULTS:
        return None
    except ResponseError:  # a Redis that refuses INFO: then it is not known either
        return None
    finally:
        await client.aclose()


class RedisConnections:
    """The Redis clients of one app: `shared`, and dedicated `reader()`s."""

    def __init__(self, settings: Settings, *, pool_size: int = POOL_SIZE) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.url = settings.redis_url
        self.pool_size = pool_size
        self.kwargs = connection_kwargs(settings)
        self.mode: Mode = "sentinel" if settings.redis_sentinel else "plain"
        self._sentinel: Sentinel | None = None
        self._known_nodes: set[tuple[str, int]] = set()  # cluster nodes seen (to reseed)
        self._primary: tuple[str, int] | None = None  # the Sentinel-named primary last seen
        self.shared: Client = self._plain_shared()

    @property
    def is_cluster(self) -> bool:
        """True on a Redis Cluster."""
        return self.mode == "cluster"

    async def open(self) -> None:
        """Settle what kind of Redis this is (asking it, briefly, when not configured) and
        build the shared clients for it."""
        if self.mode == "sentinel":
            self.shared = self._sentinel_client(self.pool_size)
            return
        forced = self.settings.cluster_mode
        cluster = forced if forced is not None else await detect_cluster(self.url, self.kwargs)
        if cluster is None:
            logger.warning(
                "could not ask Redis whether it is a cluster (down?); using it as one server "
                "(set redis_cluster: true to force cluster mode)",
                extra={"url": redacted(self.url)},
            )
        if cluster:
            await self.shared.aclose()
            self.mode = "cluster"
            self.shared = self._cluster_client(COMMAND_TIMEOUT_S + BLOCKING_MARGIN_S)
        logger.info("Redis", extra={"mode": self.mode, "url": redacted(self.url)})

    def _plain_shared(self) -> Redis:
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.pool_size,
            timeout=POOL_WAIT_S,
            socket_timeout=COMMAND_TIMEOUT_S + BLOCKING_MARGIN_S,
            health_check_interval=HEALTH_CHECK_S,
            **self.kwargs,
        )
        return Redis.from_pool(pool)

    def _cluster_client(self, socket_timeout_s: float) -> RedisCluster:
        client: RedisCluster = RedisCluster.from_url(
            self.url,
            socket_timeout=socket_timeout_s,
            max_connections=max(self.pool_size, 256),
            health_check_interval=HEALTH_CHECK_S,
            **self.kwargs,
        )
        seeds = client.nodes_manager.startup_nodes.values()
        self._known_nodes.update((n.host, int(n.port)) for n in seeds)
        return client

    def _sentinels(self) -> Sentinel:
        if self._sentinel is None:
            spec = self.settings.redis_sentinel
            assert spec is not None
            sentinel_kwargs: dict[str, Any] = {"socket_timeout": PROBE_TIMEOUT_S}
            if spec.username:
                sentinel_kwargs["username"] = spec.username
            if spec.password is not None:
                sentinel_kwargs["password"] = spec.password.get_secret_value()
            nodes = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in spec.nodes]
            self._sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        return self._sentinel

    def _sentinel_client(self, pool_size: int, socket_timeout_s: float | None = None) -> Redis:
        spec = self.settings.redis_sentinel
        assert spec is not None
        db = int((self.url.rpartition("/")[2] or "0").split("?")[0] or 0)
        kwargs = dict(self.kwargs)
        if tls_url(self.settings):
            kwargs["ssl"] = True
        client: Redis = self._sentinels().master_for(
            spec.master,
            connection_pool_class=BlockingSentinelConnectionPool,
            max_connections=pool_size,
            timeout=POOL_WAIT_S,
            db=db,
            socket_timeout=socket_timeout_s or COMMAND_TIMEOUT_S + BLOCKING_MARGIN_S,
            health_check_interval=HEALTH_CHECK_S,
            **kwargs,
        )
        return client

    def reader(self, block_s: float, name: str) -> Client:
        """A client of its own for a loop that blocks up to `block_s` per read, named `name`
        in Redis's CLIENT LIST."""
        timeout_s = block_s + BLOCKING_MARGIN_S
        if self.mode == "cluster":
            client: Client = RedisCluster.from_url(
                self.url, socket_timeout=timeout_s, client_name=name, **self.kwargs
            )
            return client
        if self.mode == "sentinel":
            reader = self._sentinel_client(2, timeout_s)
            reader.connection_pool.connection_kwargs["client_name"] = name
            return reader
        single: Redis = Redis.from_url(
            self.url,
            single_connection_client=True,
            socket_timeout=timeout_s,
            retry_on_timeout=False,
            client_name=name,
            **self.kwargs,
        )
        return single

    def slot_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """Keys split so that each group can go in one multi-key command: all of them on one
        server, one group per slot on a cluster."""
        if not self.is_cluster:
            return [list(keys)] if keys else []
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        return list(groups.values())

    async def nodes_down(self) -> dict[str, str]:
        """Every node the sidecar needs that does not answer a PING now, with why."""
        down: dict[str, str] = {}
        if isinstance(self.shared, RedisCluster):
            reseed(self.shared, self._known_nodes)
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
                    await self.shared.initialize()
                nodes = self.shared.get_nodes()
            except REDIS_FAULTS as exc:
                return {redacted(self.url): f"{exc.__class__.__name__}: {exc}"}
            self._known_nodes.update((n.host, int(n.port)) for n in nodes)
            for node in nodes:
                try:
                    async with asyncio.timeout(PROBE_TIMEOUT_S):
                        await self.shared.ping(target_nodes=node)
                except REDIS_FAULTS as exc:
                    down[node.name] = f"{exc.__class__.__name__}: {exc}"
            return down
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if self.mode == "sentinel":
                    await self._follow_primary()
                await self.shared.ping()
        except REDIS_FAULTS as exc:
            down[redacted(self.url) if self.mode == "plain" else "primary"] = (
                f"{exc.__class__.__name__}: {exc}"
            )
        return down

    async def primary_address(self) -> tuple[str, int]:
        """The primary the sentinels name now (Sentinel mode)."""
        spec = self.settings.redis_sentinel
        assert spec is not None
        host, port = await self._sentinels().discover_master(spec.master)
        return str(host), int(port)

    async def _follow_primary(self) -> None:
        """After a failover, drop the shared pool's connections to the old primary (it still
        takes writes until it is demoted, and loses them then): new ones go to the new one."""
        primary = await self.primary_address()
        if self._primary is not None and primary != self._primary:
            logger.warning(
                "the Redis primary moved (a failover); reconnecting",
                extra={"primary": f"{primary[0]}:{primary[1]}"},
            )
            assert isinstance(self.shared, Redis)
            await self.shared.connection_pool.disconnect()
        self._primary = primary

    async def aclose(self) -> None:
        """Close the shared clients (readers are closed by their loops, with `close`)."""
        await close(self.shared)


class PrimaryCheck:
    """For a loop on a Sentinel-guarded primary. After a failover the old primary goes on
    answering, as a primary, until the sentinels demote it (about ten seconds), and a demoted
    one answers reads (XREAD) as a replica: a loop on it would miss what is written to the new
    one. So the loop asks the sentinels, once a second, which node is the primary; `ensure()`
    raises ConnectionError when that is no longer the one the loop started on, and the loop
    reconnects (to the new one). A no-op without Sentinel."""

    def __init__(self, connections: RedisConnections) -> None:
        self.connections = connections
        self._next = 0.0
        self._primary: tuple[str, int] | None = None

    async def ensure(self) -> None:
        """Ask at most once a second; raise when the primary moved since the first answer."""
        if self.connections.mode != "sentinel":
            return
        now = asyncio.get_running_loop().time()
        if now < self._next:
            return
        self._next = now + ROLE_CHECK_S
        primary = await self.connections.primary_address()
        if self._primary is None:
            self._primary = primary
        elif primary != self._primary:
            raise RedisConnectionError(
                f"the primary moved to {primary[0]}:{primary[1]} (a failover): reconnecting"
            )


def reseed(cluster: RedisCluster, nodes: set[tuple[str, int]]) -> None:
    """Give a cluster client that lost every startup node the nodes it knew.

    redis-py before 7.2 drops a node from its startup nodes at each connection error and
    repopulates them only when it reaches the cluster again, so once every node failed in turn
    (a node restart under load) it never reconnects (redis/redis-py#3693). The health probe
    calls this every second, so the shared client recovers once any known node answers."""
    manager = cluster.nodes_manager
    if manager.startup_nodes:
        return
    for host, port in nodes:
        node = ClusterNode(host, port, **manager.connection_kwargs)
        manager.startup_nodes[node.name] = node
    logger.info("cluster client reseeded", extra={"nodes": sorted(f"{h}:{p}" for h, p in nodes)})


async def close(client: Client) -> None:
    """Close a client, a cluster client too when it never managed to learn the cluster (its
    own `aclose()` then leaves the connection to its first node open)."""
    await client.aclose()
    if isinstance(client, RedisCluster):
        await client.nodes_manager.aclose("startup_nodes")
        await client.nodes_manager.aclose()


def is_cluster(redis: Client) -> bool:
    """True for a Redis Cluster client (keys of one command must then share a slot)."""
    return isinstance(redis, RedisCluster)


def register(redis: Client, text: str) -> AsyncScript:
    """A Lua script bound to `redis` (a server, or a cluster: each node loads it on first use)."""
    script: AsyncScript = redis.register_script(text)  # type: ignore[misc]
    return script


async def run_scripts(
    redis: Client, script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run `script` for each (keys, args): one pipeline on one server; on a cluster
    concurrently, each on the node its keys live on (every call keeps its keys in one slot).

    On one server the pipeline sends EVALSHA only (redis-py would first ask SCRIPT EXISTS,
    one more round trip per batch); a Redis that lost its scripts (restarted, flushed) answers
    NOSCRIPT, and the script is loaded and those calls sent again."""
    if not calls:
        return []
    if isinstance(redis, RedisCluster):
        return list(await asyncio.gather(*(script(keys=list(k), args=list(a)) for k, a in calls)))
    replies = await _evalsha_batch(redis, script, calls)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await redis.script_load(script.script)
        again = await _evalsha_batch(redis, script, [calls[n] for n in missing])
        for n, reply in zip(missing, again, strict=True):
            replies[n] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _evalsha_batch(
    redis: Redis, script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


class RedisHealth:
    """Whether every Redis node the sidecar needs answers, from a real round trip every
    second: `sidecar_redis_up`, and one log line per change (never one per attempt)."""

    def __init__(self, connections: RedisConnections, metrics: Metrics) -> None:
        self.connections = connections
        self.metrics = metrics
        self.up: bool | None = None  # unknown until the first probe
        self.down: dict[str, str] = {}
        self.checked = asyncio.Event()

    async def probe(self) -> bool:
        """PING once; record and log the state when it changed."""
        try:
            down = await self.connections.nodes_down()
        except REDIS_FAULTS as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            down = {"redis": f"{exc.__class__.__name__}: {exc}"}
        up = not down
        if up != self.up or (not up and down.keys() != self.down.keys()):
            if up:
                logger.info("Redis answers", extra={"url": redacted(self.connections.url)})
            else:
                logger.warning(
                    "Redis does not answer",
                    extra={"url": redacted(self.connections.url), "nodes": down},
                )
        self.up, self.down = up, down
        if self.metrics.redis_up is not None:
            self.metrics.redis_up.set(1 if up else 0)
        self.checked.set()
        return up

    async def run(self) -> None:
        """Probe forever. Cancel to stop."""
        while True:
            checkpoint()
            await self.probe()
            await asyncio.sleep(PROBE_EVERY_S)


_SECRET_PARAMETER = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)


def redacted(url: str) -> str:
    """A Redis URL without its password, for logs and `/readyz`: neither the one before the
    host (`redis://user:password@host`) nor one given as a query parameter
    (`?password=...`, or any parameter whose name says it is a secret)."""
    scheme, sep, rest = url.partition("://")
    rest, question, query = rest.partition("?")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.partition(":")[0]
        rest = f"{user + ':***' if user else '***'}@{host}"
    if question:
        query = "&".join(
            f"{name}=***" if _SECRET_PARAMETER.search(name) else f"{name}{eq}{value}"
            for name, eq, value in (part.partition("=") for part in query.split("&"))
        )
    return f"{scheme}{sep}{rest}{question}{query}"
