"""The message log: every attempt of an owner's messages, newest first, and one message whole.

Each owner's attempts are appended to its log stream (`{prefix}:wh:{owner}:log`, about the last
10,000), and every owner's to one more (`{prefix}:wh:log`, about the last 100,000: the operator's
view, read at the same cost however many owners there are). Entry ids are time-ordered, so a
page is one `XREVRANGE` from a cursor (the last entry id seen, exclusive) or a time range.
Filters (subscription, status, event type) are applied while scanning, at most `MAX_SCAN`
entries per page: a page may come back short with a cursor to go on from.

Status: `succeeded` is an attempt that got a 2xx; `failed` any other, whether or not a retry
is still due.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from ..connections import Client
from ..timestamps import iso
from .keys import (
    all_log_key,
    attempts_key,
    message_key,
    message_log_key,
    message_owner_key,
    owner_log_key,
)
from .store import SubscriptionStore

Status = Literal["succeeded", "failed"]

PAGE = 200  # entries read per XREVRANGE while scanning
MAX_SCAN = 5000  # entries scanned at most per page of results
MESSAGE_ATTEMPTS_SHOWN = 100


def _matches(
    attempt: dict[str, Any], sub_id: str | None, status: Status | None, event_type: str | None
) -> bool:
    if sub_id is not None and attempt.get("sub_id") != sub_id:
        return False
    if event_type is not None and attempt.get("type") != event_type:
        return False
    return status is None or (attempt.get("result") == "delivered") == (status == "succeeded")


class MessageLog:
    """Reads the attempts and messages of one owner (or, for the operator, of everyone)."""

    def __init__(self, redis: Client, prefix: str, store: SubscriptionStore) -> None:
        self.redis = redis
        self.prefix = prefix
        self.store = store

    async def _scan(
        self,
        owner: str | None,
        *,
        sub_id: str | None,
        status: Status | None,
        event_type: str | None,
        since_ms: int | None,
        until_ms: int | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        key = owner_log_key(self.prefix, owner) if owner else all_log_key(self.prefix)
        end = f"({cursor}" if cursor else (str(until_ms) if until_ms is not None else "+")
        start = str(since_ms) if since_ms is not None else "-"
        found: list[tuple[str, dict[str, Any]]] = []
        scanned = 0
        while len(found) < limit and scanned < MAX_SCAN:
            rows = await self.redis.xrevrange(key, end, start, count=PAGE)
            if not rows:
                return found, None
            for raw_id, fields in rows:
                entry_id = raw_id.decode()
                scanned += 1
                end = f"({entry_id}"
                try:
                    attempt = orjson.loads(fields[b"a"])
                except (KeyError, orjson.JSONDecodeError):
                    continue
                if _matches(attempt, sub_id, status, event_type):
                    found.append((entry_id, attempt))
                    if len(found) >= limit:
                        return found, entry_id
            if len(rows) < PAGE:
                return found, None
        return found, end.removeprefix("(")

    async def attempts(
        self,
        owner: str | None,
        *,
        sub_id: str | None = None,
        status: Status | None = None,
        event_type: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of attempts, newest first, and the cursor of the next page (None: no more).
        `owner` None is the operator's view: every owner's attempts, merged."""
        found, next_cursor = await self._scan(
            owner,
            sub_id=sub_id,
            status=status,
            event_type=event_type,
            since_ms=since_ms,
            until_ms=until_ms,
            cursor=cursor,
            limit=limit,
        )
        return [attempt for _, attempt in found], next_cursor

    async def subscription_attempts(
        self, owner: str, sub_id: str, limit: int, result: str | None = None
    ) -> list[dict[str, Any]]:
        """A subscription's attempts log, newest first, at most `limit`, optionally only those
        with one `result` (delivered, retry, dead, disabled, failed)."""
        # The log is capped (ATTEMPTS_KEPT), so a filtered read scans it whole.
        stop = -1 if result else limit - 1
        raw = await self.redis.lrange(attempts_key(self.prefix, owner, sub_id), 0, stop)  # type: ignore[misc]
        attempts: list[dict[str, Any]] = []
        for item in raw:
            try:
                attempt = orjson.loads(item)
            except orjson.JSONDecodeError:
                continue
            if result is None or attempt.get("result") == result:
                attempts.append(attempt)
                if len(attempts) >= limit:
                    break
        return attempts

    async def of_subscription(self, owner: str, sub_id: str, message_id: str) -> bool:
        """True when the message exists and is the subscription's."""
        sub = await self.redis.hget(message_key(self.prefix, owner, message_id), "sub")  # type: ignore[misc]
        return sub is not None and bool(sub.decode() == sub_id)

    async def lost_reason(self, owner: str, message_id: str) -> str | None:
        """Why the message was dead-lettered without its body (None: it has its body)."""
        body, reason = await self.redis.hmget(  # type: ignore[misc]
            message_key(self.prefix, owner, message_id), ["body", "dead_reason"]
        )
        return None if body is not None else (reason or b"record_lost").decode()

    async def _owner_of(self, message_id: str) -> str | None:
        owner = await self.redis.get(message_owner_key(self.prefix, message_id))
        return owner.decode() if owner else None

    async def message(self, owner: str | None, message_id: str) -> dict[str, Any] | None:
        """One message with its payload, its last webhook headers and every attempt (newest
        first); None when it is missing (or another owner's)."""
        if owner is None:
            owner = await self._owner_of(message_id)
            if owner is None:
                return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(message_key(self.prefix, owner, message_id))
            pipe.lrange(message_log_key(self.prefix, owner, message_id), 0, -1)
            raw, log = await pipe.execute()
        if not raw:
            return None
        msg = {k.decode(): v for k, v in raw.items()}
        attempts = []
        for line in log[:MESSAGE_ATTEMPTS_SHOWN]:
            try:
                attempts.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        try:
            payload = orjson.loads(msg.get("body", b"null"))
        except orjson.JSONDecodeError:
            payload = msg.get("body", b"").decode("utf-8", "replace")
        headers = orjson.loads(msg["headers"]) if msg.get("headers") else {}
        return {
            "message_id": message_id,
            "sub_id": msg.get("sub", b"").decode(),
            "type": msg.get("type", b"").decode(),
            "created_at": iso(int(msg.get("created_ms") or 0) / 1000),
            "state": msg.get("state", b"").decode(),
            "trigger": msg.get("trigger", b"").decode(),
            "attempts_made": int(msg.get("attempts") or 0),
            "payload": payload,
            "body": msg.get("body", b"").decode("utf-8", "replace"),
            "headers": headers,
            "attempts": attempts,
            "dead_reason": msg["dead_reason"].decode() if msg.get("dead_reason") else None,
        }

    async def failed_since(self, owner: str, sub_id: str, since_ms: int) -> list[str]:
        """Ids of the subscription's messages attempted since `since_ms` whose last attempt
        failed and that have no retry due (what "recover" redelivers), oldest first."""
        ids: dict[str, None] = {}
        cursor: str | None = None
        while True:
            found, cursor = await self._scan(
                owner,
                sub_id=sub_id,
                status=None,
                event_type=None,
                since_ms=since_ms,
                until_ms=None,
                cursor=cursor,
                limit=MAX_SCAN,
            )
            for _, attempt in found:
                ids.setdefault(str(attempt["message_id"]), None)
            if cursor is None:
                break
        candidates = list(reversed(ids))
        if not candidates:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in candidates:
                pipe.hget(message_key(self.prefix, owner, mid), "state")
            states = await pipe.execute()
        return [mid for mid, st in zip(candidates, states, strict=True) if st == b"failed"]
