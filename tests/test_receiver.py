"""The webhook receiver (`sidecar receiver`, sidecar/receiver.py; examples/webhook_receiver.py runs
it from a checkout) on a real aiohttp server, fed deliveries signed by the sidecar's own signing
code, once by the real sidecar, and as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from devtools.redis_server import free_port
from examples import webhook_receiver as example_receiver
from sidecar import receiver as webhook_receiver
from sidecar.cli import main as sidecar_main
from sidecar.receiver import RECEIVER, SeenIds, create_app, worker_ctx
from sidecar.webhooks.signing import new_secret, signature_headers

from .admin_support import OP, StartAdmin
from .helpers import until_true

Client = TestClient[web.Request, web.Application]

SECRET = new_secret()
EVENT = {
    "type": "user.created",
    "timestamp": "2025-01-01T12:00:00.000Z",
    "data": {"id": "c-1", "username": "Felipe"},
    "correlation_id": "c-1",
    "route": "create-user",
    "location": "/users/c-1",
    "status": "succeeded",
}


def signed(
    body: bytes, message_id: str = "msg_1", secrets: list[str] | None = None, **kw: Any
) -> dict[str, str]:
    """The headers the sidecar sends with `body`."""
    headers = signature_headers(secrets or [SECRET], message_id, body, **kw)
    return {**headers, "Content-Type": "application/json"}


@pytest.fixture
async def receiver(aiohttp_client: Any) -> Client:
    client: Client = await aiohttp_client(create_app(SECRET))
    return client


async def processed(client: Client) -> webhook_receiver.Receiver:
    """The receiver's state once every accepted event was processed."""
    state = client.app[RECEIVER]
    async with asyncio.timeout(5):
        await state.queue.join()
    return state


async def test_a_signed_delivery_is_answered_204_and_processed(
    receiver: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    body = orjson.dumps(EVENT)
    resp = await receiver.post("/hooks/users", data=body, headers=signed(body))
    assert resp.status == 204
    state = await processed(receiver)
    assert (state.processed, state.duplicates, state.rejected) == (1, 0, 0)
    line = capsys.readouterr().out.strip()
    assert line == (
        "msg_1 user.created status=succeeded route=create-user correlation_id=c-1 "
        'location=/users/c-1 data={"id":"c-1","username":"Felipe"}'
    )


async def test_a_repeated_webhook_id_is_acknowledged_but_processed_once(receiver: Client) -> None:
    body = orjson.dumps(EVENT)
    first = await receiver.post("/", data=body, headers=signed(body, "msg_again"))
    # A retry: same id and body, signed afresh with a later timestamp.
    later = signed(body, "msg_again", timestamp=int(time.time()) + 1)
    second = await receiver.post("/", data=body, headers=later)
    assert (first.status, second.status) == (204, 204)
    state = await processed(receiver)
    assert (state.processed, state.duplicates) == (1, 1)
    other = await receiver.post("/", data=body, headers=signed(body, "msg_other"))
    assert other.status == 204
    assert (await processed(receiver)).processed == 2


@pytest.mark.parametrize(
    "tamper",
    ["body", "signature", "secret", "stale", "future", "missing-id", "garbled"],
)
async def test_a_delivery_that_does_not_verify_is_answered_400(
    receiver: Client, tamper: str
) -> None:
    body = orjson.dumps(EVENT)
    headers = signed(body)
    sent = body
    if tamper == "body":
        sent = body.replace(b'"succeeded"', b'"failed"')
    elif tamper == "signature":
        headers["webhook-signature"] = signed(b"{}")["webhook-signature"]
    elif tamper == "secret":
        headers = signed(body, secrets=[new_secret()])
    elif tamper == "stale":
        headers = signed(body, timestamp=int(time.time()) - 600)
    elif tamper == "future":
        headers = signed(body, timestamp=int(time.time()) + 600)
    elif tamper == "missing-id":
        del headers["webhook-id"]
    elif tamper == "garbled":
        headers["webhook-signature"] = "v1"
    resp = await receiver.post("/", data=sent, headers=headers)
    assert resp.status == 400
    assert (await resp.text()).startswith("invalid webhook:")
    state = await processed(receiver)
    assert (state.processed, state.rejected) == (0, 1)
    assert "msg_1" not in state.seen  # a forged delivery cannot mark an id as seen


async def test_a_signed_body_that_is_not_an_object_is_answered_400(receiver: Client) -> None:
    body = b"[1, 2]"
    resp = await receiver.post("/", data=body, headers=signed(body))
    assert resp.status == 400
    assert (await processed(receiver)).processed == 0


async def test_during_a_rotation_either_secret_verifies(aiohttp_client: Any) -> None:
    old, new = new_secret(), new_secret()
    body = orjson.dumps(EVENT)
    for secret in (old, new):
        client: Client = await aiohttp_client(create_app(secret))
        resp = await client.post("/", data=body, headers=signed(body, secrets=[new, old]))
        assert resp.status == 204


async def test_a_full_queue_answers_429_and_the_id_is_not_remembered(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_receiver, "QUEUE_MAX", 1)
    app = create_app(SECRET)
    app.cleanup_ctx.remove(worker_ctx)  # no worker: the queue stays full
    client: Client = await aiohttp_client(app)
    body = orjson.dumps(EVENT)
    assert (await client.post("/", data=body, headers=signed(body, "msg_a"))).status == 204
    full = await client.post("/", data=body, headers=signed(body, "msg_b"))
    assert full.status == 429
    assert full.headers["Retry-After"] == str(webhook_receiver.RETRY_AFTER_S)
    state = client.app[RECEIVER]
    state.queue.get_nowait()
    state.queue.task_done()
    retried = await client.post("/", data=body, headers=signed(body, "msg_b"))
    assert retried.status == 204
    assert state.duplicates == 0
    assert state.queue.get_nowait()[0] == "msg_b"


def test_seen_ids_forget_the_oldest_past_the_limit() -> None:
    seen = SeenIds(limit=2)
    for message_id in ("a", "b", "c"):
        seen.add(message_id)
    assert len(seen) == 2
    assert "a" not in seen
    assert "b" in seen and "c" in seen


def test_main_refuses_to_start_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        webhook_receiver.main(["--port", "0"])
    assert exit_info.value.code == 2
    assert "--secret or $WEBHOOK_SECRET" in capsys.readouterr().err


async def test_the_real_sidecar_delivers_to_it(
    receiver: Client, start_admin: StartAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True, "timeout": "2s"})
    sub = await admin.create(OP, str(receiver.make_url("/hooks")))
    state = receiver.app[RECEIVER]
    state.webhook = Webhook(sub["secret"])  # this subscription's secret, not the example's
    arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    handle = state.handle

    def handle_and_tell(message_id: str, event: dict[str, Any]) -> None:
        handle(message_id, event)
        arrived.put_nowait(event)

    monkeypatch.setattr(state, "handle", handle_and_tell)
    sent = await admin.call("POST", f"/subscriptions/{sub['id']}/test", OP)
    assert sent.status == 202, sent.body
    message_id = sent.body["message_id"]
    event = await asyncio.wait_for(arrived.get(), 10)
    assert event["type"] == "webhook.test"
    assert message_id in state.seen
    assert (state.processed, state.rejected) == (1, 0)


ROOT = Path(__file__).resolve().parent.parent


def test_the_example_in_a_checkout_is_the_package_receiver() -> None:
    assert example_receiver.create_app is create_app
    assert example_receiver.SeenIds is SeenIds


def test_sidecar_receiver_without_the_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As in an installation without `sidecar[receiver]`: standardwebhooks cannot be imported.
    monkeypatch.setitem(sys.modules, "standardwebhooks", None)
    monkeypatch.setitem(sys.modules, "standardwebhooks.webhooks", None)
    monkeypatch.delitem(sys.modules, "sidecar.receiver")
    assert sidecar_main(["receiver", "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "sidecar receiver needs the standardwebhooks package, which the 'receiver' extra "
        "installs:\n  pip install 'sidecar[receiver]'\n"
    )


def test_sidecar_receiver_without_a_secret_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        sidecar_main(["receiver"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sidecar receiver ")
    assert "--secret or $WEBHOOK_SECRET" in err


def test_the_example_module_still_runs_as_a_script() -> None:
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "examples.webhook_receiver", "--secret", "whsec_"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m examples.webhook_receiver ")
    assert "unusable secret" in result.stderr


async def test_the_installed_command_receives_a_signed_delivery() -> None:
    """`sidecar receiver` as a real process: listens, verifies, answers 204, prints the event."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "receiver",
        "--port",
        str(port),
        env={**os.environ, "WEBHOOK_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = await proc.stdout.readline()
        assert banner.decode() == f"receiving webhooks on http://127.0.0.1:{port}/\n"
        base = f"http://127.0.0.1:{port}"
        body = orjson.dumps(EVENT)
        async with aiohttp.ClientSession() as http:

            async def listening() -> bool:  # the banner comes just before it listens
                try:
                    async with http.get(base + "/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await until_true(listening, timeout_s=10, what="the receiver's /healthz")
            async with http.post(base + "/hooks", data=body, headers=signed(body)) as r:
                assert r.status == 204
            forged = signed(body, secrets=[new_secret()])
            async with http.post(base + "/hooks", data=body, headers=forged) as r:
                assert r.status == 400
        async with asyncio.timeout(10):
            line = await proc.stdout.readline()
        assert line.decode().startswith("msg_1 user.created status=succeeded route=create-user ")
    finally:
        proc.terminate()
        await proc.wait()
