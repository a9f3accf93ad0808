"""What Redis keeps of an operation, decoded: the operation itself, its outcome, the hold of an
Idempotency-Key, and the digests that name them (nothing a client sends is stored as sent).

    Operation   one synchronised call by its correlation id: route, owner, the id it waits on,
                its Locations, the 202 it was answered (kept for retries that attach to it),
                the digests of its status token and Idempotency-Key, its outcome once known
    Outcome     how it ended: a completion (its data, or the resource a GET of the Location
                gave) or, for a call the upstream answered without a 202, that answer
    IdemHold    who holds an Idempotency-Key: `<owner> <fingerprint> <lease until ms> <cid>`
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..completions.completion import Completion, Event, Status

State = Literal["pending", "succeeded", "failed", "expired"]

TOKEN_BYTES = 32  # a status token: 256 bits from the OS, URL-safe base64 (43 characters)
TOKEN_LENGTH = 43
KEPT_HEADERS = ("Content-Type", "Content-Location", "Location", "Retry-After")


def new_token() -> str:
    """An unguessable status token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(*parts: str | bytes) -> str:
    """SHA-256 (hex) of `parts`, each length-prefixed so no two lists of parts collide."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()


def scope_digest(tenant: str | None, route: str, key: str) -> str:
    """Where an Idempotency-Key lives: the caller's tenant, the route, the key. None of the
    three holds a line feed (a tenant is t_<hex>, a route name [A-Za-z0-9_.-], a key printable
    ASCII), so joining them by one is unambiguous."""
    return hashlib.sha256(f"idempotency\n{tenant or '-'}\n{route}\n{key}".encode()).hexdigest()


def fingerprint(method: str, target: str, body: bytes) -> str:
    """What makes two requests "the same" for an Idempotency-Key: method, path and query,
    body. Only this digest is kept, never the body. A method and a request target hold no
    line feed (HTTP forbids it), so the body follows them unambiguously."""
    h = hashlib.sha256(f"request\n{method}\n{target}\n".encode("utf-8", "surrogateescape"))
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class IdemHold:
    """Who holds an Idempotency-Key, and for which request."""

    owner: str  # a random token of the call that claimed it
    fingerprint: str
    lease_ms: int  # until when the holder may still be forwarding (then another may take over)
    correlation_id: str  # the operation, once known ('' until the upstream answered)

    def encode(self) -> str:
        """The stored form."""
        return f"{self.owner} {self.fingerprint} {self.lease_ms} {self.correlation_id}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> IdemHold | None:
        """The stored form read back; None for nothing (or nothing readable)."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(" ", 3)
        if len(parts) < 3 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3] if len(parts) > 3 else "")


@dataclass(slots=True)  # not frozen: built for every call, where frozen init costs
class Outcome:
    """How an operation ended, as kept for the status monitor and idempotent replays."""

    kind: Literal["completion", "response"]
    state: Literal["succeeded", "failed"]
    at_ms: int
    source: str = ""  # stream | poll (a completion), upstream | sidecar (a response)
    event_type: str | None = None
    data: bytes | None = None  # the completion's data as sent
    is_json: bool = False
    body: bytes | None = None  # the resource (body: location) or the response's body
    content_type: str | None = None
    status: int = 0  # a response's status
    headers: dict[str, str] | None = None  # a response's kept headers
    kept: bool = True  # False: larger than operations.max_result, so not kept

    @classmethod
    def of_completion(
        cls, completion: Completion, at_s: float, resource: tuple[bytes, str | None] | None = None
    ) -> Outcome:
        """The outcome a completion (and, for `respond.body: location`, the resource) makes."""
        data = completion.raw
        if data is None and completion.data is not None:
            data = (
                orjson.dumps(completion.data)
                if completion.is_json
                else str(completion.data).encode()
            )
        return cls(
            "completion",
            completion.status,
            int(at_s * 1000),
            source=completion.source,
            event_type=completion.event_type,
            data=data,
            is_json=completion.is_json,
            body=resource[0] if resource else None,
            content_type=resource[1] if resource else None,
        )

    @classmethod
    def of_event(cls, event: Event, state: Status, at_s: float) -> Outcome:
        """The outcome a completion event makes, its data kept as sent (never parsed here)."""
        return cls(
            "completion",
            state,
            int(at_s * 1000),
            source="stream",
            event_type=event.event_type,
            data=event.raw,
            is_json=event.is_json,
        )

    def completion(self, correlation_id: str) -> Completion:
        """The completion again, for the answers that build on one."""
        data = None
        if self.data is not None:
            data = orjson.loads(self.data) if self.is_json else self.data.decode("utf-8", "replace")
        return Completion(
            correlation_id,
            self.state,
            data,
            self.is_json,
            self.event_type,
            source="poll" if self.source == "poll" else "stream",
            raw=self.data if self.is_json else None,
        )

    def bounded(self, max_bytes: int) -> Outcome:
        """This outcome as kept: without its bytes when they pass `max_bytes`."""
        size = len(self.data or b"") + len(self.body or b"")
        if size <= max_bytes:
            return self
        return Outcome(
            self.kind,
            self.state,
            self.at_ms,
            self.source,
            self.event_type,
            is_json=self.is_json,
            status=self.status,
            headers=self.headers,
            content_type=self.content_type,
            kept=False,
        )

    def fields(self) -> dict[str, str]:
        """The hash fields (the bytes, `data` and `body`, travel beside them)."""
        out = {
            "kind": self.kind,
            "state": self.state,
            "done_at": str(self.at_ms),
            "source": self.source,
            "json": "1" if self.is_json else "0",
            "kept": "1" if self.kept else "0",
        }
        if self.event_type is not None:
            out["etype"] = self.event_type
        if self.content_type is not None:
            out["ctype"] = self.content_type
        if self.status:
            out["code"] = str(self.status)
        if self.headers is not None:
            out["hdrs"] = orjson.dumps(self.headers).decode()
        return out

    @classmethod
    def decode(cls, f: dict[str, bytes]) -> Outcome | None:
        """The outcome in an operation's hash; None while it has none."""
        if f.get("done") != b"1" or f.get("kind") not in (b"completion", b"response"):
            return None
        text = {k: v.decode("utf-8", "replace") for k, v in f.items() if k not in ("data", "body")}
        headers = None
        if text.get("hdrs"):
            try:
                loaded = orjson.loads(text["hdrs"])
                headers = {str(k): str(v) for k, v in loaded.items()}
            except (orjson.JSONDecodeError, AttributeError):
                headers = None
        return cls(
            "completion" if text["kind"] == "completion" else "response",
            "succeeded" if text.get("state") == "succeeded" else "failed",
            int(text.get("done_at") or 0),
            source=text.get("source", ""),
            event_type=text.get("etype"),
            data=f.get("data"),
            is_json=text.get("json") == "1",
            body=f.get("body"),
            content_type=text.get("ctype"),
            status=int(text.get("code") or 0),
            headers=headers,
            kept=text.get("kept", "1") == "1",
        )


@dataclass(frozen=True, slots=True)
class Accepted202:
    """The 202 an operation was answered, kept for retries that attach to it."""

    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation as Redis keeps it."""

    correlation_id: str
    route: str
    tenant: str | None
    wait_id: str | None  # the id its completion carries (None: it was never tracked)
    created_ms: int
    location: str | None  # the Location the client was given (the API's, or the sidecar's)
    upstream_location: str | None  # the API's own, absolute (for a GET of the resource)
    tracked_at: str  # the tracking record's created_at, as written (names its messages)
    token_digest: str | None
    idem_digest: str | None
    accepted: Accepted202 | None
    outcome: Outcome | None
    dropped: int  # timeline events left out (the list was full)

    @property
    def operation_id(self) -> str | None:
        """The id its completion carries, when it is not the correlation id."""
        return self.wait_id if self.wait_id and self.wait_id != self.correlation_id else None

    @classmethod
    def decode(cls, correlation_id: str, raw: dict[bytes, bytes]) -> Operation | None:
        """An operation's hash read back; None when there is none."""
        if not raw or b"route" not in raw:
            return None
        f = {k.decode(): v for k, v in raw.items()}
        text = {k: v.decode("utf-8", "replace") for k, v in f.items() if k not in _BLOBS}
        accepted = None
        if text.get("accepted_headers"):
            try:
                loaded: Any = orjson.loads(text["accepted_headers"])
                headers = {str(k): str(v) for k, v in loaded.items()}
                accepted = Accepted202(headers, f.get("accepted_body", b""))
            except (orjson.JSONDecodeError, AttributeError):
                accepted = None
        return cls(
            correlation_id=correlation_id,
            route=text.get("route", ""),
            tenant=text.get("tenant") or None,
            wait_id=text.get("wait_id") or None,
            created_ms=int(text.get("created") or 0),
            location=text.get("location") or None,
            upstream_location=text.get("upstream_location") or None,
            tracked_at=text.get("tracked_at", ""),
            token_digest=text.get("token") or None,
            idem_digest=text.get("idem") or None,
            accepted=accepted,
            outcome=Outcome.decode(f),
            dropped=int(text.get("dropped") or 0),
        )


_BLOBS = ("data", "body", "accepted_body")
