"""Polling the upstream's Location until it says done or failed.

`poll_location` GETs the status URL with the client's allowed headers, first after
`interval`, then at a delay growing (with jitter) up to `max_interval`, honouring `Retry-After`,
never past its deadline. Done/failed is decided per route by status code or by a JSON field.
A `303 See Other` (or another redirect) is followed to the resource, whose answer is the result.
Poll errors (connection refused, timeouts, 5xx) are counted and retried; they never end the wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import StreamReader
from yarl import URL

from ..config import PollWait
from ..http.headers import parse_retry_after
from ..http.pool import UpstreamPool
from ..http.upstream import UPSTREAM_ERRORS, upstream_errors
from ..logs import Every
from ..metrics import Metrics
from .completion import MAX_DATA_BYTES, MAX_DATA_DEPTH, Completion, Status, too_deep

logger = logging.getLogger(__name__)

_failed_log = Every()  # one line a second at most while the upstream is down
GROWTH = 1.5  # each pending poll waits this much longer, up to max_interval
JITTER = 0.1  # ±10 % on every delay, so synchronised clients don't poll in lockstep
MAX_REDIRECTS = 5
MAX_BODY = MAX_DATA_BYTES  # a status document (or resource) larger than this is a poll error
REDIRECTS = (301, 302, 303, 307, 308)


class TooManyRedirects(ValueError):
    """The status URL redirected in a loop."""


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """The upstream's answer to one poll (after following redirects)."""

    status: int
    body: bytes
    content_type: str | None
    retry_after_s: float | None


def json_pointer(document: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 pointer; raise LookupError when it leads nowhere."""
    if pointer == "":
        return document
    node = document
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                raise LookupError(pointer)
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise LookupError(pointer)
    return node


def decode_body(body: bytes, content_type: str | None) -> tuple[Any, bool]:
    """(value, is_json) of a poll body: JSON when it parses (and nests no deeper than a
    completion's data may, so it can be sent on), else text."""
    if not body:
        return None, False
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace"), False
    if too_deep(value, MAX_DATA_DEPTH):
        return body.decode("utf-8", "replace"), False
    return value, True


def judge(spec: PollWait, answer: PollAnswer) -> Status | None:
    """succeeded / failed / None (still pending) for one poll answer, per the route's rules."""
    if answer.status in spec.failed_status:
        return "failed"
    if spec.field is not None:
        if not 200 <= answer.status < 300:
            return None
        try:
            value = json_pointer(orjson.loads(answer.body), spec.field)
        except (orjson.JSONDecodeError, LookupError):
            return None
        if value in spec.success:
            return "succeeded"
        if value in spec.failure:
            return "failed"
        return None
    return "succeeded" if answer.status in spec.done_status else None


class TooLarge(ValueError):
    """A status document (or resource) larger than a completion's data may be."""


async def read_capped(content: StreamReader, limit: int) -> bytes:
    """A body read to its end; `TooLarge` when it is longer than `limit` (never a truncated
    body taken for a whole one)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the answer is larger than {limit} bytes")


async def fetch(
    pool: UpstreamPool,
    url: URL,
    headers: Mapping[str, str],
    timeout_s: float,
) -> PollAnswer:
    """GET `url` through the upstream client, following redirects (a 303 leads to the
    resource) up to MAX_REDIRECTS, all within `timeout_s`. Raises the upstream errors
    (`UPSTREAM_ERRORS`), TimeoutError, `TooManyRedirects` or `TooLarge`."""
    async with asyncio.timeout(max(timeout_s, 0.001)):
        for _ in range(MAX_REDIRECTS + 1):
            with upstream_errors():
                async with await pool.request("GET", url, headers) as response:
                    location = response.headers.get("Location")
                    if response.status in REDIRECTS and location:
                        url = url.join(URL(location, encoded=True))
                        continue
                    body = await read_capped(response.content, MAX_BODY)
                    return PollAnswer(
                        response.status,
                        body,
                        response.headers.get("Content-Type"),
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
    raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects from the Location")


async def poll_location(
    pool: UpstreamPool,
    url: URL,
    headers: Mapping[str, str],
    spec: PollWait,
    *,
    correlation_id: str,
    deadline: float,
    metrics: Metrics,
    route: str,
) -> tuple[Completion, PollAnswer] | None:
    """Poll until done/failed (the completion and the final answer) or `deadline` (None)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = spec.interval
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(delay * random.uniform(1 - JITTER, 1 + JITTER), remaining))
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        retry_after_s: float | None = None
        try:
            answer = await fetch(pool, url, headers, remaining)
        except (*UPSTREAM_ERRORS, TimeoutError, ValueError) as exc:
            metrics.polls.labels(route, "error").inc()
            if _failed_log.ready():
                logger.info(
                    "poll failed; retrying",
                    extra={
                        "route": route,
                        "correlation_id": correlation_id,
                        "error": f"{exc.__class__.__name__}: {exc}",
                        "since_last_line": _failed_log.take_skipped(),
                    },
                )
        else:
            status = judge(spec, answer)
            if status is not None:
                metrics.polls.labels(route, "done" if status == "succeeded" else "failed").inc()
                metrics.poll_completions.labels(route, status).inc()
                metrics.poll_detect_duration.labels(route).observe(loop.time() - started)
                data, is_json = decode_body(answer.body, answer.content_type)
                return Completion(correlation_id, status, data, is_json, source="poll"), answer
            metrics.polls.labels(route, "error" if answer.status >= 500 else "pending").inc()
            retry_after_s = answer.retry_after_s
        delay = min(delay * GROWTH, spec.max_interval)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)  # the sleep is still cut at the deadline
