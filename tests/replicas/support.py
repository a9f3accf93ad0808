"""The parts of the replica tests: the Redis under test (one server, or a Redis Cluster), a jobs
API with the backend that completes its jobs, a webhook receiver that knows which replica sent
each request, and the replicas themselves (`sidecar run` processes).

Nothing here is a mock: the API and the receiver are aiohttp servers, the backend XADDs to the
real stream, the replicas are real processes reading their own config files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import psutil
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster
from standardwebhooks.webhooks import Webhook

from sidecar.webhooks.keys import DELIVERY_GROUP, dispatch_group

from ..helpers import drained, until_true
from ..processes import SidecarProcess, StartProcess, base_config

TOKEN = "operator-token-for-replica-tests"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
CLIENT_A = {"Authorization": "Bearer key-a"}
CLIENT_B = {"Authorization": "Bearer key-b"}
OK_TYPE, FAILED_TYPE = "JobDone", "JobFailed"  # what the backend publishes
DONE, FAILED = "job.done", "job.failed"  # the webhook event types
READY_TIMEOUT_S = 15.0
HOLD_CAP_S = 20.0  # the longest the receiver holds a request nobody releases
TIMEOUT_S, CLAIM_AFTER_S = 1.0, 2.0  # webhooks.timeout and claim_after of the SIGKILL tests
TAKEOVER_SLACK_S = 0.5  # beyond claim_after x 1.5, for the claim and the request themselves


# --------------------------------------------------------------------------------------------
# The Redis under test
# --------------------------------------------------------------------------------------------

# One XADD per event, in one script: the backend's batch lands at once (a blocked reader is
# woken with all of it, not with its first entry).
_PUBLISH = """
for i = 1, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'correlation_id', ARGV[i], 'type', ARGV[i + 1],
    'payload', ARGV[i + 2])
end
return #ARGV / 3
"""


@dataclass(frozen=True)
class PendingAttempt:
    """An attempt a replica has read from a subscription's queue and not yet finished."""

    sub_id: str
    entry: str  # the queue entry's id
    consumer: str  # the replica's consumer name: host-pid-random
    message_id: str  # its webhook-id


@dataclass
class RedisUnderTest:
    """One Redis server or a 3-node cluster; `client` routes commands (a cluster client on a
    cluster), `nodes` are plain clients of each server (to scan and clean up), and every key a
    test makes starts with `prefix`."""

    mode: str  # "single" | "cluster"
    url: str
    client: aioredis.Redis | RedisCluster
    nodes: list[aioredis.Redis]
    prefix: str

    @property
    def stream(self) -> str:
        """The completion stream of this test (under its prefix, so it is cleaned up too)."""
        return f"{self.prefix}:jobs.events"

    async def publish(self, events: list[tuple[str, str, bytes]]) -> None:
        """XADD (correlation id, type, payload) events to the stream, all in one script."""
        args = [part for event in events for part in event]
        await self.client.eval(_PUBLISH, 1, self.stream, *args)  # type: ignore[misc,arg-type]

    async def keys(self, pattern: str) -> list[tuple[aioredis.Redis, str]]:
        """Every key matching `pattern`, with the server holding it."""
        found = []
        for node in self.nodes:
            found += [(node, k.decode()) async for k in node.scan_iter(match=pattern, count=1000)]
        return found

    async def unsettled(self) -> str | None:
        """What is left to do, or None when nothing is: every completion dispatched (read and
        acknowledged by the dispatch group), every subscription queue empty (each attempt
        handled and deleted), no retry scheduled. An owner's queues and due set share a slot,
        so each owner is read in one transaction: an attempt moving between its queue and the
        due set is seen in one of them."""
        if not await drained(self.client, self.stream, dispatch_group(self.prefix)):  # type: ignore[arg-type]
            return "completions not dispatched yet"
        by_owner: dict[tuple[aioredis.Redis, str], list[str]] = {}
        for node, queue in await self.keys(f"{self.prefix}:wh:*:q:*"):
            by_owner.setdefault((node, queue.split(":q:", 1)[0]), []).append(queue)
        for (node, owner), queues in by_owner.items():
            async with node.pipeline(transaction=True) as pipe:
                for queue in queues:
                    pipe.xlen(queue)
                pipe.zcard(f"{owner}:due")
                *lengths, due = await pipe.execute()
            if any(lengths) or due:
                return f"{owner}: {sum(lengths)} attempts queued or in flight, {due} scheduled"
        return None

    async def quiet(self, timeout_s: float = 15.0) -> None:
        """Wait until nothing is left to do: no further webhook attempt can start after this."""
        left: str | None = None

        async def settled() -> bool:
            nonlocal left
            left = await self.unsettled()
            return left is None

        await until_true(settled, timeout_s, every_s=0.05, what=lambda: f"Redis not quiet: {left}")

    async def pending(self, sub_id: str) -> list[PendingAttempt]:
        """Every attempt of the subscription's queue that a replica has read and not yet
        finished."""
        out = []
        for _node, queue in await self.keys(f"{self.prefix}:wh:*:q:{sub_id}"):
            rows = await self.client.xpending_range(queue, DELIVERY_GROUP, "-", "+", 1000)
            for row in rows:
                entry = row["message_id"].decode()
                for _id, fields in await self.client.xrange(queue, entry, entry):  # none: done
                    consumer, message = row["consumer"].decode(), fields[b"m"].decode()
                    out.append(PendingAttempt(sub_id, entry, consumer, message))
        return out

    async def delete_everything(self) -> None:
        """Remove every key of this test (one at a time: on a cluster they span slots)."""
        for node, key in await self.keys(f"{self.prefix}*"):
            await node.unlink(key)

    async def aclose(self) -> None:
        await self.client.aclose()
        for node in self.nodes:
            await node.aclose()


# --------------------------------------------------------------------------------------------
# The jobs API and its backend
# --------------------------------------------------------------------------------------------


@dataclass
class JobsApi:
    """An asynchronous API: `POST /jobs` answers 202 + Location at once; its backend publishes
    each job's completion on the stream (at once with `auto`, else when the test says), with a
    result of that job's own: `{"job": n, "result": "result-<n>", "correlation_id": id}`. A
    body with `"fail": true` fails instead."""

    redis: RedisUnderTest
    auto: bool = True
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # correlation id -> body
    published: set[str] = field(default_factory=set)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        async def create(request: web.Request) -> web.Response:
            cid = request.headers["X-Correlation-ID"]
            self.calls[cid] = await request.json()
            if self.auto:
                self._queue.put_nowait(cid)
            async with self.arrived:
                self.arrived.notify_all()
            return web.json_response({"id": cid}, status=202, headers={"Location": f"/jobs/{cid}"})

        async def pong(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        app = web.Application()
        app.router.add_post("/jobs", create)
        app.router.add_get("/ping", pong)
        return app

    def event(self, cid: str) -> tuple[str, str, bytes]:
        body = self.calls[cid]
        if body.get("fail"):
            return cid, FAILED_TYPE, orjson.dumps({"job": body["n"], "error": "it broke"})
        result = {"job": body["n"], "result": f"result-{body['n']}", "correlation_id": cid}
        return cid, OK_TYPE, orjson.dumps(result)

    async def complete(self, cids: Iterable[str]) -> None:
        """Publish the completions of these calls, in one batch."""
        batch = [c for c in cids if c not in self.published]
        if batch:
            self.published.update(batch)
            await self.redis.publish([self.event(c) for c in batch])

    async def backend(self) -> None:
        """With `auto`: complete every call as soon as it arrived (batching what queued up)."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self.complete(batch)

    async def wait_calls(self, count: int, timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.calls) >= count)


def expected_result(body: dict[str, Any], cid: str) -> dict[str, Any]:
    return {"job": body["n"], "result": f"result-{body['n']}", "correlation_id": cid}


# --------------------------------------------------------------------------------------------
# The webhook receiver
# --------------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One request a webhook endpoint received; `sender` is the pid of the replica that sent
    it; `status` what the receiver answered (None: never answered)."""

    hook: str
    sender: int | None
    headers: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic()
    status: int | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def payload(self, secret: str) -> dict[str, Any]:
        """The payload, verified as a Standard Webhooks receiver does (raises when invalid)."""
        verified: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return verified


# sock_diag (netlink): the kernel's own lookup of one TCP socket by its addresses, which is
# what `ss` uses; reading the whole of /proc/net/tcp instead takes tens of milliseconds on a
# busy machine, long enough to delay the receiver's answers past a webhook timeout.
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST = 4, 20, 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the established IPv4 TCP socket bound to `local` and connected to
    `remote` (in any process), or None when there is none."""
    sockid = (
        struct.pack("!HH", local[1], remote[1])
        + socket.inet_aton(local[0]).ljust(16, b"\0")
        + socket.inet_aton(remote[0]).ljust(16, b"\0")
        + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
        netlink.sendto(header + request, (0, 0))
        reply = netlink.recv(65536)
    _length, kind = struct.unpack_from("=IH", reply)
    if kind != SOCK_DIAG_BY_FAMILY:  # NLMSG_ERROR: no such socket
        return None
    inode: int = struct.unpack_from("=I", reply, 16 + 4 + 48 + 16)[0]  # inet_diag_msg.inode
    return inode


def owner_of_socket(inode: int) -> int | None:
    """Which child process of this one (the replicas are) holds the socket `inode` open."""
    target = f"socket:[{inode}]"
    for pid in (child.pid for child in psutil.Process().children()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


@dataclass
class Receiver:
    """Webhook endpoints `/hook/{name}`: each answers 200 at once, or 500 in mode `fail`, or
    200 after `slow_s` in mode `slow`.

    With `hold_first_sender`, the replica that sends the first request becomes the `victim`:
    its requests are held unanswered (until `release`), every live replica's are answered.
    """

    modes: dict[str, str] = field(default_factory=dict)
    slow_s: float = 0.05
    hold_first_sender: bool = False
    victim: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hits: list[Hit] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    server: TestServer | None = None
    _senders: dict[Any, int | None] = field(default_factory=dict)  # transport -> pid

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def sender_of(self, request: web.Request) -> int | None:
        """The replica whose socket is the other end of this request's connection (once
        found, remembered for the connection: the replicas keep theirs alive)."""
        transport = request.transport
        assert transport is not None
        if self._senders.get(transport) is None:
            peer = transport.get_extra_info("peername")[:2]
            inode = socket_inode(peer, transport.get_extra_info("sockname")[:2])
            self._senders[transport] = owner_of_socket(inode) if inode else None
        return self._senders[transport]

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            hit = Hit(
                name,
                self.sender_of(request),
                dict(request.headers),
                await request.read(),
                time.monotonic(),
            )
            self.hits.append(hit)
            if self.hold_first_sender and self.victim is None:
                self.victim = hit.sender
            await self._changed()
            if self.victim is not None and hit.sender in (self.victim, None):
                # The victim's, or one nobody can name any more: sent by the victim just
                # before it died (a live replica's socket is always found).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), HOLD_CAP_S)
                return web.Response(status=503)  # at teardown: nobody is listening any more
            mode = self.modes.get(name, "ok")
            if mode == "slow":
                await asyncio.sleep(self.slow_s)  # a receiver that takes its time
            hit.status = 500 if mode == "fail" else 200
            await self._changed()
            return web.Response(status=hit.status)

        app = web.Application()
        app.router.add_post("/hook/{name}", hook)
        return app

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout_s: float = 15.0,
        what: Callable[[], str] | None = None,
    ) -> None:
        """Wait until `predicate()` holds (checked on every request and answer); on timeout,
        fail saying `what()` (what was seen)."""
        try:
            async with asyncio.timeout(timeout_s), self.changed:
                await self.changed.wait_for(predicate)
        except TimeoutError:
            seen = what() if what else f"{len(self.hits)} requests"
            raise AssertionError(f"receiver: not there after {timeout_s}s: {seen}") from None

    def of(self, hook: str) -> list[Hit]:
        return [h for h in self.hits if h.hook == hook]

    def delivered(self, hook: str) -> list[Hit]:
        return [h for h in self.of(hook) if h.delivered]


# --------------------------------------------------------------------------------------------
# Replicas
# --------------------------------------------------------------------------------------------


def route(stream: str) -> dict[str, Any]:
    return {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "budget": "20s",
        "wait": {"stream": {"key": stream, "success": [OK_TYPE], "failure": [FAILED_TYPE]}},
        "webhook_events": {"success": DONE, "failure": FAILED},
    }


def replica_config(api: JobsApi, **webhooks: Any) -> dict[str, Any]:
    """One replica's config: its own ports; the shared Redis, prefix, stream and routes."""
    return base_config(
        api.url,
        [route(api.redis.stream)],
        redis_url=api.redis.url,
        key_prefix=api.redis.prefix,
        admin_token=TOKEN,
        webhooks={"allow_private_targets": True, **webhooks},
    )


@dataclass
class Replicas:
    """Starts replicas (`sidecar run`) and waits until each is ready (Redis answering, the
    completion reader connected)."""

    run: StartProcess
    http: aiohttp.ClientSession
    started: list[SidecarProcess] = field(default_factory=list)

    async def start(self, config: dict[str, Any]) -> SidecarProcess:
        sidecar = await self.run(config)
        await ready(self.http, sidecar)
        self.started.append(sidecar)
        return sidecar

    async def start_many(self, configs: list[dict[str, Any]]) -> list[SidecarProcess]:
        return list(await asyncio.gather(*(self.start(c) for c in configs)))


async def ready(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> None:
    """A bounded poll of `/readyz` (a child process offers nothing to await)."""
    why = ""

    async def answers() -> bool:
        nonlocal why
        async with http.get(f"{sidecar.admin_url}/readyz") as resp:
            why = await resp.text()
            # "ready", not "ready (degraded)": Redis answers and the completion reader is in.
            if resp.status == 200 and (await resp.json())["status"] == "ready":
                return True
        return False

    await until_true(
        answers,
        READY_TIMEOUT_S,
        every_s=0.05,
        what=lambda: f"replica not ready: {why}\n{sidecar.stderr_text()}",
    )


async def metric_total(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, name: str, **labels: str
) -> float:
    """The sum of a metric's samples (over every other label) on one replica's /metrics."""
    async with http.get(f"{sidecar.admin_url}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def subscribe(
    http: aiohttp.ClientSession,
    sidecar: SidecarProcess,
    caller: dict[str, str],
    url: str,
    events: list[str],
) -> dict[str, Any]:
    """A subscription created through one replica's admin API: its view, with the secret."""
    async with http.post(
        f"{sidecar.admin_url}/admin/api/subscriptions",
        json={"url": url, "events": events},
        headers=caller,
    ) as resp:
        assert resp.status == 201, await resp.text()
        sub: dict[str, Any] = await resp.json()
        return sub


async def attempts_log(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, sub_id: str
) -> list[dict[str, Any]]:
    """A subscription's attempts log (newest first), as the admin API shows it."""
    url = f"{sidecar.admin_url}/admin/api/subscriptions/{sub_id}/attempts?limit=1000"
    async with http.get(url, headers=OPERATOR) as resp:
        assert resp.status == 200, await resp.text()
        log: list[dict[str, Any]] = (await resp.json())["attempts"]
        return log


@dataclass
class Answer:
    """A client's call and what it got back."""

    body: dict[str, Any]
    status: int
    correlation_id: str
    json: Any


async def call(
    http: aiohttp.ClientSession,
    sidecar: SidecarProcess,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Answer:
    """POST /jobs through one replica."""
    async with http.post(f"{sidecar.proxy_url}/jobs", json=body, headers=headers or {}) as resp:
        raw = await resp.read()
        return Answer(body, resp.status, resp.headers["X-Correlation-ID"], orjson.loads(raw))


def attempt_lines(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    return [line for line in sidecar.logs if line.get("message") == "webhook attempt"]


async def kill(sidecar: SidecarProcess) -> None:
    """SIGKILL: nothing is acknowledged, handed back or closed by the process itself."""
    sidecar.send(signal.SIGKILL)
    assert await sidecar.wait_exit(5.0) == -signal.SIGKILL


async def all_delivered(
    receiver: Receiver, expected: dict[str, dict[str, Any]], timeout_s: float
) -> None:
    """Wait until each hook has had as many 2xx deliveries as it expects."""

    def done() -> bool:
        return all(len(receiver.delivered(h)) >= len(e) for h, e in expected.items())

    def seen() -> str:
        return ", ".join(f"{h} {len(receiver.delivered(h))}/{len(e)}" for h, e in expected.items())

    await receiver.wait_for(done, timeout_s, what=seen)
