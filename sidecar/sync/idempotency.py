"""Idempotency-Key: retries of one command run it once (routes with `idempotency: {}`).

A key is scoped to the caller's credential (its tenant hash), the route and the key itself, and
stored only as the SHA-256 of the three, beside a fingerprint of the request (method, path and
query, body: its SHA-256, never the body):

    first call     claims the key (SET NX, atomic across replicas, in the round trip that
                   claims its correlation id) and is forwarded; the call's tracking write binds
                   the key to its operation
    a retry while the first is held, or after its fallback 202
                   attaches: waits for the outcome within its own budget and is answered like
                   the first (the 202 again when its budget runs out first)
    a retry after the outcome is known
                   replays it (status, body, content type, Location)
    attached and replayed answers carry `Idempotent-Replayed: true` and the first call's
    correlation id; the upstream sees the command once

    the same key with another request      422 problem+json
    an empty, overlong or repeated key     400 problem+json
    still forwarding when a retry's budget ends, so no answer to give yet
                                           409 problem+json with Retry-After
    a 5xx (the upstream's or ours)         releases the key: a retry goes upstream again

The first call's forwarding is not cancelled when its client leaves (its retry will want the
outcome); a call that died mid-forward holds the key only for a lease (connect and read timeouts
and a margin), after which a retry takes it over. Without Redis answering, the call is
forwarded unclaimed, as if the route had no idempotency (never worse off than the API alone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from ..config import Route
from ..connections import REDIS_FAULTS
from ..errors import BadRequest, Conflict, Unprocessable, UpstreamUnreachable
from ..http.context import CallContext
from ..http.headers import response_headers
from ..http.pool import UpstreamResponse
from ..http.upstream import CHUNK, Relayed, Replayed, relay, request_target
from ..ids import new_id
from ..keys import idempotency_key
from ..logs import Every
from ..operations import OPERATIONS, Operations
from ..operations.records import IdemHold, Operation, fingerprint, scope_digest
from ..operations.store import now_ms
from ..routing import RUNTIME
from ..state import HASHER, POLLERS, TRACKER
from ..timeline import IDEMPOTENT_ATTACH, IDEMPOTENT_REPLAY
from ..tracking import Claim
from .answers import fallback
from .identity import keep_or_mint, own_correlation_id, supplied_id
from .journal import Journal
from .replay import accepted_of, answer_outcome, route_of
from .status import await_outcome

logger = logging.getLogger(__name__)

MAX_KEY = 255  # characters (what Stripe allows)
LEASE_MARGIN_S = 10.0  # beyond the upstream's connect and read timeouts
FIRST_CHECK_S = 0.05  # an attached retry looks at the key this soon, then ever less often
MAX_CHECK_S = 1.0
REPLAYED = "Idempotent-Replayed"
T = TypeVar("T")

_unavailable_log = Every()


@dataclass(frozen=True, slots=True)
class Claimed:
    """This call holds the key: it is forwarded."""

    scope: str
    owner: str


class _Again(Exception):
    """The key was let go while a retry followed it: claim it anew."""


def key_of(request: web.Request, header: str) -> str | None:
    """The request's Idempotency-Key (a bare value, or a quoted string as the IETF draft
    writes it); None without one; 400 for an empty, overlong, non-ASCII or repeated key."""
    values = request.headers.getall(header, [])
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"send one {header} header, not {len(values)}", kind="idempotency")
    key = values[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    # Printable ASCII (0x20-0x7E) only: isascii() and isprintable() together say exactly that.
    if not key.strip() or len(key) > MAX_KEY or not (key.isascii() and key.isprintable()):
        raise BadRequest(
            f"{header} must be 1-{MAX_KEY} printable ASCII characters (a UUID, say)",
            kind="idempotency",
        )
    return key


async def own_call(
    request: web.Request,
    call: CallContext,
    route: Route,
    body: bytes | None,
    journal: Journal,
    deadline: float,
    applied: list[str],
    holding: bool,
) -> Claimed | web.StreamResponse | None:
    """Make the call its own: its correlation id and, with an Idempotency-Key, the key (one
    round trip for both). `Claimed` when it holds the key, an answer when the key belongs to an
    earlier call (attached, replayed), None without a key (or without Redis answering)."""
    spec = route.idempotency
    if spec is None:  # the common case, kept lean
        await own_correlation_id(request, call)
        return None
    ops, tracker = request.app[OPERATIONS], request.app[TRACKER]
    try:
        key = key_of(request, spec.header)
    except BadRequest:
        if ops is not None:
            ops.metrics.count(route.name, "invalid")
        raise
    if key is None or ops is None or tracker is None:
        await own_correlation_id(request, call)
        return None
    credential = request.headers.get(request.app[RUNTIME].settings.tenancy.credential_header)
    supplied = supplied_id(request, call)
    try:
        tenant = await request.app[HASHER].tenant(credential)
    except REDIS_FAULTS:
        _unclaimed(request, call, route, ops, supplied)
        return None
    scope = scope_digest(tenant, route.name, key)
    mine = _hold(request, request.method, body or b"")
    claims = [tracker.id_claim(supplied, supplied)] if supplied is not None else []
    first_claims = [*claims, _key_claim(request, route, scope, mine)]
    while True:
        try:
            replies = await tracker.claim_all(first_claims)
        except REDIS_FAULTS:
            _unclaimed(request, call, route, ops, supplied)
            return None
        if claims:  # the correlation id's claim rode along the first time
            keep_or_mint(request, call, bool(replies[0]))
            claims, first_claims = [], first_claims[-1:]
        held = IdemHold.decode(replies[-1])
        if held is None:
            return _claimed(call, route, ops, journal, scope, mine)
        if held.fingerprint != mine.fingerprint:
            ops.metrics.count(route.name, "mismatch")
            call.idempotency = "mismatch"
            raise Unprocessable(
                f"this {spec.header} was used with another request (method, path or body); "
                "use a new key for a new request"
            )
        following = _Following(scope, held, mine, deadline, applied, holding)
        try:
            answered = await _follow(request, call, route, ops, journal, following)
        except _Again:  # claimed anew, with a lease from now
            mine = _hold(request, request.method, body or b"")
            first_claims = [_key_claim(request, route, scope, mine)]
            continue
        if isinstance(answered, Claimed):
            return _claimed(call, route, ops, journal, answered.scope, mine)
        return answered


def _hold(request: web.Request, method: str, body: bytes) -> IdemHold:
    """This call's hold of a key: a new owner token, its fingerprint, its lease."""
    proxy = request.app[RUNTIME].settings.proxy
    lease_ms = now_ms() + int((proxy.connect_timeout + proxy.read_timeout + LEASE_MARGIN_S) * 1000)
    target = fingerprint(method, request_target(request), body)
    return IdemHold(new_id().replace("-", ""), target, lease_ms, "")


def _key_claim(request: web.Request, route: Route, scope: str, hold: IdemHold) -> Claim:
    assert route.idempotency is not None
    prefix = request.app[RUNTIME].settings.key_prefix
    ttl_ms = int(route.idempotency.ttl * 1000)
    return Claim(idempotency_key(prefix, scope), hold.encode(), ttl_ms, get=True)


def _claimed(
    call: CallContext, route: Route, ops: Operations, journal: Journal, scope: str, hold: IdemHold
) -> Claimed:
    ops.metrics.count(route.name, "new")
    call.idempotency = "new"
    journal.idem = (scope, hold.owner)
    return Claimed(scope, hold.owner)


def _unclaimed(
    request: web.Request,
    call: CallContext,
    route: Route,
    ops: Operations,
    supplied: str | None,
) -> None:
    """Redis did not answer: forwarded without a claim, as the API alone would be."""
    if supplied is not None:
        keep_or_mint(request, call, None)
    ops.metrics.count(route.name, "unavailable")
    call.idempotency = "unavailable"
    if _unavailable_log.ready():
        logger.warning(
            "Idempotency-Key not claimed (Redis did not answer); the call is forwarded as is",
            extra={"route": route.name, "since_last_line": _unavailable_log.take_skipped()},
        )


@dataclass(frozen=True, slots=True)
class _Following:
    """A retry following the call that holds its key."""

    scope: str
    held: IdemHold  # the hold as first seen
    mine: IdemHold  # the hold this retry would take
    deadline: float  # of this retry's own budget (loop time)
    applied: list[str]  # its Prefer preferences applied
    holding: bool  # False: it is answered at once (respond-async, or its route sheds)


async def _follow(
    request: web.Request,
    call: CallContext,
    route: Route,
    ops: Operations,
    journal: Journal,
    following: _Following,
) -> web.StreamResponse | Claimed:
    """Answer a retry from the call that holds the key: replay its outcome, or wait for it
    (attach) within this retry's budget; take the key over when its holder died mid-forward;
    raise `_Again` when it was let go (a 5xx)."""
    loop = asyncio.get_running_loop()
    scope, held, mine = following.scope, following.held, following.mine
    deadline, applied, holding = following.deadline, following.applied, following.holding
    kind, check_s = IDEMPOTENT_REPLAY, FIRST_CHECK_S
    while True:
        op = await ops.store.get(held.correlation_id) if held.correlation_id else None
        if op is not None and op.idem_digest != scope:
            op = None  # a later call's, under a reused id: this key's operation is gone
        if op is not None and op.outcome is not None:
            return await _answered(request, call, route, ops, op, kind, journal, applied)
        if (held.correlation_id and op is None) or (
            not held.correlation_id and held.lease_ms < now_ms()
        ):
            new = IdemHold(mine.owner, mine.fingerprint, mine.lease_ms, "")
            if await ops.store.take_over(scope, held, new):
                logger.info(
                    "Idempotency-Key taken over (its first call never answered)",
                    extra={"route": route.name, "correlation_id": call.correlation_id},
                )
                return Claimed(scope, mine.owner)
        kind = IDEMPOTENT_ATTACH
        remaining = deadline - loop.time()
        if op is not None and (remaining <= 0 or not holding):
            reason = "budget" if holding else "prefer"
            return _accepted_again(request, call, route, ops, op, journal, applied, reason)
        if remaining <= 0 or not holding:
            ops.metrics.count(route.name, "in_progress")
            call.idempotency = "in_progress"
            retry_after = max(1, int(route.respond.retry_after))
            raise Conflict(
                "a call with this Idempotency-Key is still being forwarded; retry later",
                headers={"Retry-After": str(retry_after)},
            )
        if op is not None:
            outcome = await await_outcome(request, route_of(request, op), op, remaining)
            if outcome is not None:
                found = dataclasses.replace(op, outcome=outcome)
                return await _answered(request, call, route, ops, found, kind, journal, applied)
        else:  # the upstream has not answered the first call yet: look again shortly
            await asyncio.sleep(min(check_s, remaining))
            check_s = min(check_s * 1.5, MAX_CHECK_S)
        fresh = await ops.store.hold(scope)
        if fresh is None:
            raise _Again
        held = fresh


async def _answered(
    request: web.Request,
    call: CallContext,
    route: Route,
    ops: Operations,
    op: Operation,
    kind: str,
    journal: Journal,
    applied: list[str],
) -> web.StreamResponse:
    """The outcome again, marked replayed, under the first call's correlation id."""
    assert op.outcome is not None
    _as_retry_of(call, op, kind)
    answer = await answer_outcome(request, call, op, op.outcome, applied)
    if answer is None:  # the resource's GET failed: the 202 again, as a held call would
        return _accepted_again(request, call, route, ops, op, journal, applied, "location")
    answer.headers[REPLAYED] = "true"
    result = "replay" if kind == IDEMPOTENT_REPLAY else "attach"
    ops.metrics.count(route.name, result)
    journal.follows(op.correlation_id, kind)
    return answer


def _accepted_again(
    request: web.Request,
    call: CallContext,
    route: Route,
    ops: Operations,
    op: Operation,
    journal: Journal,
    applied: list[str],
    reason: str,
) -> web.StreamResponse:
    """The first call's 202 again: its outcome is not known yet."""
    _as_retry_of(call, op, IDEMPOTENT_ATTACH)
    answer = fallback(request, call, accepted_of(op), applied, reason)
    answer.headers[REPLAYED] = "true"
    ops.metrics.count(route.name, "attach")
    journal.follows(op.correlation_id, IDEMPOTENT_ATTACH, reason=reason)
    return answer


def _as_retry_of(call: CallContext, op: Operation, kind: str) -> None:
    call.correlation_id = op.correlation_id
    call.operation_id = op.operation_id
    call.idempotency = "replay" if kind == IDEMPOTENT_REPLAY else "attach"


async def keep_going(
    request: web.Request,
    journal: Journal,
    work: Coroutine[Any, Any, T],
    finish: Callable[[asyncio.Task[T]], Coroutine[Any, Any, None]],
) -> T:
    """Run `work` (a call holding a key, on its way upstream) so that its client leaving does
    not stop it: the task belongs to the app, and when the handler is cancelled, `finish`
    records what the upstream answered once it has (the retry will want it)."""
    task = request.app[POLLERS].spawn(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done() or not task.cancelled():
            journal.detach()
            request.app[POLLERS].spawn(finish(task))
        raise


async def relay_kept(
    request: web.Request, call: CallContext, upstream: UpstreamResponse, limit: int
) -> tuple[web.StreamResponse, bytes | None]:
    """Relay an answer other than a 202 of a call holding a key, keeping its body (up to
    `limit` bytes, `operations.max_result`) for replays; a larger one is streamed on and not
    kept (None)."""
    length = upstream.content_length
    if request.method == "HEAD" or (length is not None and length > limit):
        return await relay(request, call, upstream), None
    chunks, size = [], 0
    try:
        while size <= limit:
            chunk = await upstream.content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnreachable(
            f"upstream failed mid-answer: {exc.__class__.__name__}", kind="protocol"
        ) from exc
    body = b"".join(chunks)
    headers = response_headers(upstream.headers, upstream=call.upstream, origin=call.origin)
    headers[request.app[RUNTIME].settings.correlation_header] = call.correlation_id
    call.status = upstream.status
    if size <= limit:
        headers.popall("Content-Length", None)  # ours, of the bytes read
        return Replayed(
            status=upstream.status, reason=upstream.reason, body=body, headers=headers
        ), body
    response = Relayed(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    call.response = response
    await response.write(body)
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError):
        call.outcome, call.error_kind = "upstream_error", "protocol"
        if request.transport is not None:
            request.transport.close()
        return response, None
    await response.write_eof()
    return response, None
