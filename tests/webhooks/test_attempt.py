"""One attempt against real receivers: signatures, classification, redirects, SSRF at connect."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from sidecar.webhooks.attempt import create_webhook_session, post_once
from sidecar.webhooks.retry import next_delay
from sidecar.webhooks.signing import new_secret
from sidecar.webhooks.targets import TargetPolicy

OPEN = TargetPolicy(True, [])
STRICT = TargetPolicy(False, [])


async def receiver(aiohttp_server: Any, status: int = 200, headers: Any = None) -> Any:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.Response(status=status, text="ok" * 2000, headers=headers)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return server, seen


async def test_delivered_and_verifiable(aiohttp_server: Any) -> None:
    server, seen = await receiver(aiohttp_server)
    secret = new_secret()
    async with create_webhook_session(OPEN, 4) as session:
        result = await post_once(
            session, OPEN, str(server.make_url("/hook")), "msg_a", b'{"x":1}', [secret], 1.0
        )
    assert result.delivered and result.error is None and len(result.excerpt) == 2048
    headers, body = seen[0]
    assert Webhook(secret).verify(body, headers) == {"x": 1}
    assert headers["webhook-id"] == "msg_a"


async def test_redirect_not_followed_and_retry_after(aiohttp_server: Any) -> None:
    server, _ = await receiver(aiohttp_server, 429, {"Retry-After": "7"})
    async with create_webhook_session(OPEN, 4) as session:
        result = await post_once(
            session, OPEN, str(server.make_url("/hook")), "msg_b", b"{}", [new_secret()], 1.0
        )
    assert result.status == 429 and result.error == "http" and result.retry_after_s == 7
    assert next_delay([0.05, 0.1], 1, result) == 7
    assert next_delay([0.05, 0.1], 3, result) is None
    server, _ = await receiver(aiohttp_server, 302, {"Location": "http://169.254.169.254/"})
    async with create_webhook_session(OPEN, 4) as session:
        result = await post_once(
            session, OPEN, str(server.make_url("/hook")), "msg_c", b"{}", [new_secret()], 1.0
        )
    assert result.status == 302 and not result.delivered


async def test_refused_at_connect_time(aiohttp_server: Any) -> None:
    server, seen = await receiver(aiohttp_server)
    url = f"http://localhost:{server.port}/hook"
    async with create_webhook_session(STRICT, 4) as session:
        result = await post_once(session, STRICT, url, "msg_d", b"{}", [new_secret()], 1.0)
        literal = await post_once(
            session, STRICT, str(server.make_url("/hook")), "msg_e", b"{}", [new_secret()], 1.0
        )
    assert result.error == "refused" and literal.error == "refused"
    assert seen == []


async def test_connect_error() -> None:
    async with create_webhook_session(OPEN, 4) as session:
        result = await post_once(
            session, OPEN, "http://127.0.0.1:9/hook", "msg_f", b"{}", [new_secret()], 1.0
        )
    assert result.error == "connect"


async def test_a_secret_that_does_not_decode_is_an_internal_error_not_a_crash() -> None:
    async with create_webhook_session(OPEN, 4) as session:
        result = await post_once(
            session, OPEN, "http://127.0.0.1:9/hook", "msg_g", b"{}", ["whsec_a"], 1.0
        )
    assert (result.status, result.error) == (None, "internal")
    assert "whsec" not in result.detail  # the secret never reaches the attempts log
