"""The timeline of one synchronised call, written as the call goes, at no round trip of its own.

The journal collects the call's events in memory. Those known when the upstream answered 202
(received, forwarded, upstream_answered, held or the early fallback) ride the call's tracking
record (`intake`); the rest (fallback, completed, answered, client_gone) and the outcome go in
one closing write, queued when the call ends, after its tracking write, and batched with other
calls' (`operations.writer`). A call the upstream answered without a 202 has no tracking record:
its closing write creates its operation. A retry that attached to (or replayed) an earlier call
writes one event on that call's timeline instead of a timeline of its own.

Without Redis there are no operations, and every method here does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from ..config import Route
from ..connections import REDIS_FAULTS
from ..errors import SidecarError
from ..http.context import CallContext
from ..operations import OPERATIONS, Operations
from ..operations.records import KEPT_HEADERS, Outcome, digest
from ..operations.writer import Update
from ..routing import RUNTIME
from ..state import HASHER, POLLERS
from ..timeline import (
    ANSWERED,
    CLIENT_GONE,
    COMPLETED,
    FALLBACK,
    FORWARDED,
    HELD,
    MILESTONES,
    RECEIVED,
    UPSTREAM_ANSWERED,
    Event,
    Intake,
    cut,
    event,
)
from .answers import Accepted
from .wait import Verdict


class Journal:
    """What happens to one call, on its way to its operation's timeline."""

    __slots__ = (
        "_detached",
        "_follows",
        "_track",
        "call",
        "events",
        "fallback_said",
        "idem",
        "on",
        "ops",
        "outcome",
        "received_s",
        "request",
        "route",
        "settings",
        "tenant",
    )

    def __init__(self, request: web.Request, call: CallContext) -> None:
        self.request = request
        self.call = call
        self.ops: Operations | None = request.app[OPERATIONS]
        self.settings = request.app[RUNTIME].settings  # of the call's start, throughout
        self.on = False  # True once started with Redis configured: every method a no-op else
        self.route: Route | None = None
        self.events: list[Event] = []
        self.received_s = 0.0
        self.tenant: str | None = None
        self.outcome: Outcome | None = None
        self.fallback_said = False
        self.idem: tuple[str, str] | None = None  # (scope digest, owner) of a key this call holds
        self._track: asyncio.Future[bool] | None = None
        self._follows: tuple[str, str, dict[str, Any]] | None = None
        self._detached = False

    def start(self, route: Route) -> None:
        """The call is received (its body read): its first event."""
        if self.ops is None:
            return
        self.route, self.on = route, True
        call, request = self.call, self.request
        self.received_s = time.time() - (time.perf_counter() - call.started)
        # Events are built as literals on the call path (one dict each, no helper per event).
        self.events.append(
            {
                "k": RECEIVED,
                "t": int(self.received_s * 1000),
                "method": request.method,
                "path": cut(request.path),
            }
        )

    def forwarded(self) -> None:
        """The call goes upstream."""
        if self.on:
            self.events.append({"k": FORWARDED, "t": int(time.time() * 1000)})

    def upstream_answered(self, status: int, location: str | None = None) -> None:
        """The upstream answered (headers read)."""
        if not self.on:
            return
        answered: Event = {"k": UPSTREAM_ANSWERED, "t": int(time.time() * 1000), "status": status}
        if location:
            answered["location"] = cut(location)
        if self.call.upstream_s is not None:
            answered["after_ms"] = round(self.call.upstream_s * 1000, 1)
        self.events.append(answered)

    def holding(self, holding: bool, shed: bool, budget_s: float) -> None:
        """The call is held for its completion, or answered 202 at once."""
        if not self.on:
            return
        now_ms = int(time.time() * 1000)
        if holding:
            self.events.append({"k": HELD, "t": now_ms, "budget_ms": round(budget_s * 1000)})
        else:
            self.events.append({"k": FALLBACK, "t": now_ms, "reason": "shed" if shed else "prefer"})
            self.fallback_said = True

    def learnt(self, verdict: Verdict, resource: tuple[bytes, str | None] | None = None) -> None:
        """The held call learnt its completion (and, for `body: location`, the resource)."""
        if self.on:
            self.outcome = Outcome.of_completion(verdict.completion, time.time(), resource)

    def relayed(self, response: web.StreamResponse, kept: bytes | None) -> None:
        """The upstream's answer was not a 202 and went to the client as it was; `kept` is its
        body when the call holds an Idempotency-Key (a replay needs it), else None."""
        if not self.on:
            return
        self.upstream_answered(response.status)
        headers = {n: response.headers[n] for n in KEPT_HEADERS if n in response.headers}
        self.outcome = Outcome(
            "response",
            "succeeded" if response.status < 400 else "failed",
            int(time.time() * 1000),
            source="upstream",
            status=response.status,
            headers=headers if kept is not None else None,
            body=kept or None,
            content_type=response.headers.get("Content-Type"),
            kept=kept is not None,
        )

    def follows(self, correlation_id: str, kind: str, **fields: Any) -> None:
        """This call is a retry answered from the operation `correlation_id`: one event there."""
        if self.on:
            self._follows = (correlation_id, kind, fields)

    def intake(
        self,
        tenant: str | None,
        wait_id: str,
        accepted: Accepted,
        *,
        created_at: float,
        token: str | None = None,
    ) -> Intake:
        """The operation's first writes, to ride the tracking record written at `created_at`
        (its events so far go with it; `token`: its status URL's, if it has one)."""
        assert self.ops is not None and self.route is not None
        settings = self.settings
        call = self.call
        self.tenant = tenant
        fields = self._fields(tenant)
        # The record's created_at, exactly as the record writes it: message ids derive from it.
        fields.update(wait_id=wait_id, tracked_at=repr(created_at))
        if accepted.client_location:
            fields["location"] = accepted.client_location
        if accepted.upstream_location is not None:
            fields["upstream_location"] = accepted.upstream_location_text or ""
        if token is not None:
            fields["token"] = digest(token)
        body = b""
        if self.idem is not None:
            fields["idem"] = self.idem[0]
            kept = {n: accepted.headers[n] for n in KEPT_HEADERS if n in accepted.headers}
            fields["accepted_headers"] = orjson.dumps(kept).decode()
            if len(accepted.body) <= settings.operations.max_result:
                body = accepted.body
        events, self.events = self.events, []
        return Intake(
            correlation_id=call.correlation_id,
            fields=fields,
            events=events,
            ttl_ms=self._ttl_ms(),
            events_ttl_ms=int(settings.tracking_ttl * 1000),
            accepted_body=body,
            token_digest=fields.get("token"),
            token_value=f"{tenant or '-'} {call.correlation_id}",
            token_ttl_ms=int(settings.operations.retention * 1000),
            idem_digest=self.idem[0] if self.idem else None,
            idem_owner=self.idem[1] if self.idem else "",
        )

    def tracked(self, track: asyncio.Future[bool] | None) -> None:
        """The call's tracking write (and its intake) is under way: the closing write follows
        it, so that it never reaches Redis before the operation does."""
        self._track = track

    def detach(self) -> None:
        """The call's client left while its forwarding goes on (it holds an Idempotency-Key):
        the handler's end closes nothing; whoever finishes the forwarding `resume`s."""
        self._detached = True

    def resume(self) -> None:
        """Take the journal back after `detach`."""
        self._detached = False

    def close(self, error: BaseException | None = None, *, gone: bool = False) -> None:
        """The call ended (answered, failed with `error`, or its client left: `gone`, or a
        cancellation): queue the closing write."""
        if not self.on or self._detached:
            return
        assert self.ops is not None
        update = self._closing(error, gone or isinstance(error, asyncio.CancelledError))
        if update is None:
            return
        writer, track = self.ops.writer, self._track
        credential = self._credential() if update.create is not None else None
        if update.create is not None and credential is not None:
            hasher = self.request.app[HASHER]
            if not hasher.known(credential):
                # The credential's hash key is still to be loaded (from Redis): a task does both.
                self.request.app[POLLERS].spawn(self._owned(update))
                return
            update.create["tenant"] = hasher.tenant_now(credential) or ""
        if track is None or track.done():
            writer.later(update)
        else:
            track.add_done_callback(lambda _: writer.later(update))

    def _credential(self) -> str | None:
        header = self.settings.tenancy.credential_header
        return self.request.headers.get(header) or None

    async def _owned(self, update: Update) -> None:
        """Write an operation made at `close` once its owner is known."""
        assert self.ops is not None and update.create is not None
        with contextlib.suppress(*REDIS_FAULTS):
            tenant = await self.request.app[HASHER].tenant(self._credential())
            update.create["tenant"] = tenant or ""
        self.ops.writer.later(update)

    def _closing(self, error: BaseException | None, gone: bool) -> Update | None:
        call, settings = self.call, self.settings
        now = time.time()
        now_ms = int(now * 1000)
        after_ms = round((now - self.received_s) * 1000, 1)
        events_ttl_ms = int(settings.tracking_ttl * 1000)
        if self._follows is not None:
            cid, kind, fields = self._follows
            retry = {"k": kind, "t": now_ms, "status": call.status or None, "after_ms": after_ms}
            retry.update(fields)
            return Update(cid, [retry], events_ttl_ms=events_ttl_ms, routine=True)
        events = self.events
        status = call.status
        if isinstance(error, SidecarError):
            status = error.status
            self.outcome = Outcome(
                "response", "failed", now_ms, source="sidecar", status=status, kept=False
            )
        if gone or call.outcome == "client_gone":
            events.append({"k": CLIENT_GONE, "t": now_ms, "after_ms": after_ms})
        else:
            if call.outcome == "fallback_async" and not self.fallback_said:
                events.append({"k": FALLBACK, "t": now_ms, "reason": call.reason})
            events.append(
                {
                    "k": ANSWERED,
                    "t": now_ms,
                    "status": status,
                    "outcome": call.outcome,
                    "after_ms": after_ms,
                }
            )
        update = Update(call.correlation_id, events, events_ttl_ms=events_ttl_ms)
        outcome = self.outcome
        if outcome is not None:
            update.outcome = outcome.bounded(settings.operations.max_result)
            if outcome.kind == "completion":
                completed: Event = {"k": COMPLETED, "t": outcome.at_ms, "source": outcome.source}
                if outcome.event_type is not None:
                    completed["event_type"] = outcome.event_type
                completed["state"] = outcome.state
                update.first_events = [completed]
        if self._track is None:  # no tracking record: this write makes the operation
            update.create = self._fields(self.tenant)
            update.ttl_ms = self._ttl_ms()
        if self.idem is not None:
            self._let_go_or_bind(update, error, gone)
        return update

    def _let_go_or_bind(self, update: Update, error: BaseException | None, gone: bool) -> None:
        """A call holding a key releases it after a 5xx (or an error of ours, or its client
        leaving before anything was forwarded), so a retry goes upstream again; a call the
        upstream answered without a 202 binds it to its operation (a 202 bound it already)."""
        assert self.idem is not None
        outcome = self.outcome
        failed = error is not None and not isinstance(error, asyncio.CancelledError)
        failed = failed or (
            outcome is not None and outcome.kind == "response" and outcome.status >= 500
        )
        never_answered = gone and self._track is None and outcome is None
        if failed or never_answered:
            update.idem_digest, update.idem_owner = self.idem
            update.release = True
            if self.ops is not None and self.route is not None:
                self.ops.metrics.count(self.route.name, "released")
        elif self._track is None and outcome is not None:
            update.idem_digest, update.idem_owner = self.idem

    def _fields(self, tenant: str | None) -> dict[str, str]:
        assert self.route is not None
        fields = {
            "route": self.route.name,
            "tenant": tenant or "",
            "created": str(int(self.received_s * 1000)),
        }
        if self.idem is not None:
            fields["idem"] = self.idem[0]
        return fields

    def _ttl_ms(self) -> int:
        """How long the operation is kept: as long as its call is tracked, its status URL
        answers, and its Idempotency-Key is remembered, whichever is longest."""
        assert self.route is not None
        settings = self.settings
        keep = [settings.tracking_ttl, settings.operations.retention]
        if self.route.idempotency is not None:
            keep.append(self.route.idempotency.ttl)
        return int(max(keep) * 1000)


def note(request: web.Request, correlation_id: str, kind: str, **fields: Any) -> None:
    """One event on an operation's timeline, written with the next batch (a long-poll of its
    Location, a read of its status URL): nothing waits for it."""
    ops = request.app[OPERATIONS]
    if ops is None:
        return
    ttl_ms = int(request.app[RUNTIME].settings.tracking_ttl * 1000)
    ops.writer.later(
        Update(
            correlation_id,
            [event(kind, time.time(), **fields)],
            events_ttl_ms=ttl_ms,
            routine=kind not in MILESTONES,
        )
    )
