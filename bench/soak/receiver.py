"""The soak's webhook receiver: verifies every signature (Standard Webhooks, written out here so
it does not trust the code under test), fails a share of deliveries with a 500 and hangs another
share past the sidecar's attempt timeout, and records every arrival.

One receiver serves every subscription, at `/hooks/{name}`; each name has its own secret.
A delivery is an arrival that verified and was answered 2xx at once; a hang is never one (the
sidecar has given up on it by the time it ends).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

MAX_BODY = 1 << 20
TOLERANCE_S = 300  # Standard Webhooks: timestamps further off are refused (replays)


def verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """True when one `v1,` signature of `webhook-signature` is the HMAC of id.timestamp.body
    keyed by the secret, and the timestamp is recent."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_S:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    return any(
        hmac.compare_digest(expected, sig) for sig in headers.get("webhook-signature", "").split()
    )


@dataclass
class Receiver:
    """The receiver's behaviour and everything it saw."""

    fail_ratio: float
    hang_ratio: float
    hang_s: float
    seed: int
    secrets: dict[str, str] = field(default_factory=dict)  # name -> whsec_
    # (name, correlation id) -> the webhook-ids delivered for it, and how often each
    delivered: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    first_delivery: dict[tuple[str, str], float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/hooks/{name}", self.hook)
        return app

    async def hook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        secret = self.secrets.get(name)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if secret is None or not verifies(secret, headers, body):
            self.outcomes["bad signature"] += 1
            return web.Response(status=401)
        draw = self.rng.random()
        if draw < self.hang_ratio:
            self.outcomes["hung"] += 1
            await asyncio.sleep(self.hang_s)
            return web.Response(status=503)
        if draw < self.hang_ratio + self.fail_ratio:
            self.outcomes["failed (500)"] += 1
            return web.Response(status=500)
        try:
            payload = json.loads(body)
            cid = str(payload["correlation_id"])
        except (ValueError, KeyError, TypeError):
            self.outcomes["not a completion"] += 1
            return web.Response(status=204)
        self.outcomes["delivered"] += 1
        key = (name, cid)
        self.delivered.setdefault(key, Counter())[headers["webhook-id"]] += 1
        self.first_delivery.setdefault(key, time.monotonic())
        self.changed.set()
        return web.Response(status=204)
