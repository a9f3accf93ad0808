"""A webhook target's own secrets (a `?token=` in its URL, a password before its host) never
reach the attempts log, the message view or a log line, even when the receiver's failure makes
the HTTP client quote the URL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
import pytest

from sidecar.webhooks.attempt import shown_url

from ..admin_support import A, StartAdmin


@pytest.fixture
async def garbage_receiver() -> AsyncIterator[int]:
    """A receiver that answers every POST with bytes that are not HTTP."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"not http at all\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


def test_a_shown_url_masks_every_query_value_and_the_password() -> None:
    assert shown_url("https://hooks.example/in?token=sekrit&v=2") == (
        "https://hooks.example/in?token=***&v=***"
    )
    assert shown_url("https://bot:sekrit@hooks.example/in") == "https://bot:***@hooks.example/in"
    assert shown_url("https://hooks.example/in") == "https://hooks.example/in"


async def test_a_target_s_token_never_reaches_the_attempts_log_or_the_log(
    start_admin: StartAdmin, garbage_receiver: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = await start_admin(webhooks={"allow_private_targets": True})
    url = f"http://127.0.0.1:{garbage_receiver}/hook?token=sekrit-token"
    sub = await admin.create(A, url)
    assert (await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)).status == 202
    (attempt,) = await admin.subscription_attempts_until(A, sub["id"], lambda log: len(log) == 1)
    message = await admin.call("GET", f"/messages/{attempt['message_id']}", A)
    shown = orjson.dumps([attempt, message.body]).decode()
    assert "token=***" in shown  # the error still says which URL it was
    assert "sekrit" not in shown
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "sekrit" not in logged
