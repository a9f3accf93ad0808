"""The message log as the portal reads it: `message_log(runtime)`.

The portal's endpoints read the log through the `MessageLogReader` interface: the runtime's own
message log (`runtime.messages`) when the delivery storage has one, else `AttemptsLogReader`, a
thin reader over today's keys (each subscription's capped attempts list and the message hashes).
The reader merges owners' lists newest first and pages them with a cursor that names the last
attempt shown, so a page never repeats or skips an attempt while new ones arrive on top.
"""

from __future__ import annotations

import base64
import binascii
from calendar import timegm
from time import strptime
from typing import Any, Literal, Protocol

import orjson

from ..tenancy import OPERATOR
from ..timestamps import iso
from .keys import attempts_key, message_key
from .runtime import WebhookRuntime
from .store import Subscription

MAX_RECOVER = 1000  # messages one recover call queues at most
TERMINAL_FAILURES = frozenset({"dead", "failed", "disabled"})

StatusFilter = Literal["succeeded", "failed"]


class MessageLogReader(Protocol):
    """What the portal needs of the message log (owner None: the operator, everyone's)."""

    async def attempts(
        self,
        owner: str | None,
        *,
        sub_id: str | None = None,
        status: StatusFilter | None = None,
        event_type: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Attempts newest first, and the cursor of the next page (None: no more)."""
        ...

    async def message(self, owner: str | None, message_id: str) -> dict[str, Any] | None:
        """One message with its attempts; None when missing or another owner's."""
        ...

    async def failed_since(self, owner: str, sub_id: str, since_ms: int) -> list[str]:
        """Ids of the subscription's messages whose last attempt failed at or after `since_ms`."""
        ...


def message_log(runtime: WebhookRuntime) -> MessageLogReader:
    """The runtime's message log when it has one, else the reader over the attempts lists."""
    log = getattr(runtime, "messages", None)
    if log is not None:
        return log  # type: ignore[no-any-return]
    return AttemptsLogReader(runtime)


def time_ms(text: str) -> int:
    """Unix milliseconds of an ISO 8601 `...T..:..:...mmmZ` timestamp (0 when unreadable)."""
    try:
        whole, _, frac = text.rstrip("Z").partition(".")
        seconds = timegm(strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return seconds * 1000 + int((frac + "000")[:3])
    except ValueError:
        return 0


def encode_cursor(key: tuple[int, str, str, int]) -> str:
    """An opaque cursor naming one attempt's position."""
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str, str, int] | None:
    """The position a cursor names, or None when it is not one of ours."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        t, sub, msg, n = raw
        if all(isinstance(v, int) for v in (t, n)) and all(isinstance(v, str) for v in (sub, msg)):
            return (t, sub, msg, n)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        pass
    return None


class BadCursor(ValueError):
    """The cursor is not one this log made."""


class AttemptsLogReader:
    """The message log read from each subscription's attempts list (the last 1000 attempts of
    each) and the message hashes."""

    def __init__(self, runtime: WebhookRuntime) -> None:
        self.redis = runtime.redis
        self.prefix = runtime.prefix
        self.store = runtime.store

    async def _subscriptions(self, owner: str | None, sub_id: str | None) -> list[Subscription]:
        if sub_id is not None:
            sub = await self.store.get_for(sub_id, owner or OPERATOR)
            return [sub] if sub else []
        return await self.store.list_for(None if owner is None else [owner])

    async def _entries(self, subs: list[Subscription]) -> list[dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub in subs:
                pipe.lrange(attempts_key(self.prefix, sub.id), 0, -1)
            lists = await pipe.execute()
        out = []
        for sub, raw_list in zip(subs, lists, strict=True):
            for raw in raw_list:
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict):
                    out.append(self._shape(sub.id, entry))
        return out

    @staticmethod
    def _shape(sub_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "message_id": str(entry.get("message_id", "")),
            "sub_id": sub_id,
            "type": str(entry.get("type", "")),
            "attempt": int(entry.get("attempt") or 0),
            "time": str(entry.get("time", "")),
            "status": entry.get("response_status"),
            "error": entry.get("error"),
            "duration_ms": float(entry.get("duration_ms") or 0.0),
            "trigger": str(entry.get("trigger", "")),
            "result": str(entry.get("result", "")),
            "response_excerpt": entry.get("response_excerpt"),
            "error_detail": entry.get("error_detail"),
        }

    @staticmethod
    def _key(entry: dict[str, Any]) -> tuple[int, str, str, int]:
        return (time_ms(entry["time"]), entry["sub_id"], entry["message_id"], entry["attempt"])

    async def attempts(
        self,
        owner: str | None,
        *,
        sub_id: str | None = None,
        status: StatusFilter | None = None,
        event_type: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Attempts newest first, filtered, one page."""
        after = decode_cursor(cursor) if cursor else None
        if cursor and after is None:
            raise BadCursor(cursor)
        entries = await self._entries(await self._subscriptions(owner, sub_id))
        picked = []
        for entry in entries:
            key = self._key(entry)
            if after is not None and key >= after:
                continue
            if status == "succeeded" and entry["result"] != "delivered":
                continue
            if status == "failed" and entry["result"] == "delivered":
                continue
            if event_type is not None and entry["type"] != event_type:
                continue
            if since_ms is not None and key[0] < since_ms:
                continue
            if until_ms is not None and key[0] >= until_ms:
                continue
            picked.append((key, entry))
        picked.sort(key=lambda pair: pair[0], reverse=True)
        page = picked[:limit]
        next_cursor = encode_cursor(page[-1][0]) if len(picked) > limit else None
        return [self._brief(entry) for _, entry in page], next_cursor

    @staticmethod
    def _brief(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in ("response_excerpt", "error_detail")}

    async def message(self, owner: str | None, message_id: str) -> dict[str, Any] | None:
        """One message with its attempts, oldest first."""
        raw = await self.redis.hgetall(message_key(self.prefix, message_id))  # type: ignore[misc]
        if not raw:
            return None
        fields = {k.decode(): v for k, v in raw.items()}
        sub = await self.store.get_for(fields.get("sub", b"").decode(), owner or OPERATOR)
        if sub is None:
            return None
        body = fields.get("body", b"")
        try:
            payload: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = body.decode("utf-8", "replace")
        attempts = [e for e in await self._entries([sub]) if e["message_id"] == message_id]
        attempts.sort(key=lambda e: (e["attempt"], time_ms(e["time"])))
        created_ms = int(fields.get("created_ms") or 0)
        return {
            "message_id": message_id,
            "sub_id": sub.id,
            "type": fields.get("type", b"").decode(),
            "created_at": iso(created_ms / 1000),
            "state": fields.get("state", b"").decode(),
            "payload": payload,
            # Today's attempts log keeps neither the timestamp nor the signature it sent.
            "headers": {
                "webhook-id": message_id,
                "webhook-timestamp": None,
                "webhook-signature": None,
            },
            "attempts": attempts,
        }

    async def failed_since(self, owner: str, sub_id: str, since_ms: int) -> list[str]:
        """Messages whose latest attempt ended in failure (dead, failed, disabled) at or after
        `since_ms`, newest first, at most `MAX_RECOVER`."""
        subs = await self._subscriptions(owner, sub_id)
        latest: dict[str, dict[str, Any]] = {}
        for entry in await self._entries(subs):
            seen = latest.get(entry["message_id"])
            if seen is None or entry["attempt"] > seen["attempt"]:
                latest[entry["message_id"]] = entry
        failed = [
            e
            for e in latest.values()
            if e["result"] in TERMINAL_FAILURES and time_ms(e["time"]) >= since_ms
        ]
        failed.sort(key=self._key, reverse=True)
        return [e["message_id"] for e in failed[:MAX_RECOVER]]
