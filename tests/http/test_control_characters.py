"""Paths carrying control characters (`%0d%0a`, terminal escapes): they belong to the upstream
like any other path, and the access log line they produce stays one line, in either format, with
nothing a terminal would act on."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import web

from sidecar.logs import JsonFormatter, TextFormatter

from ..conftest import ProxyFactory, Upstream
from ..raw_http import read_answer

FORGED = "/items/1%0d%0a2026-01-01%2000:00:00,000%20INFO%20sidecar.access:%20call%1b%5b2J%e2%80%a8"


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
async def test_a_path_with_control_characters_passes_through_and_logs_one_line(
    start_proxy: ProxyFactory,
    start_upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    formatter: logging.Formatter,
) -> None:
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", r"/{tail:[\s\S]*}", anything)
    proxy = await start_proxy(await start_upstream(app))
    reader, writer = await proxy.raw()
    with caplog.at_level(logging.INFO, "sidecar.access"):
        writer.write(f"GET {FORGED} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _, body = await read_answer(reader)
    writer.close()
    assert (status, orjson.loads(body)) == (200, {"ok": True})  # the upstream's, not a 404
    assert seen == [FORGED]  # forwarded byte for byte

    (record,) = [r for r in caplog.records if r.name == "sidecar.access"]
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line  # one line: nothing forged after it
    assert "\x1b" not in line and "\u2028" not in line  # nothing for a terminal to act on
    if isinstance(formatter, TextFormatter):
        assert 'path="/items/1\\r\\n2026-01-01 00:00:00,000 INFO sidecar.access: call' in line
        assert "\\x1b[2J\\u2028" in line
    else:
        assert orjson.loads(line)["path"].startswith("/items/1\r\n2026")


def test_text_values_that_could_pose_as_fields_are_quoted() -> None:
    record = logging.LogRecord("sidecar.access", logging.INFO, "x", 1, "call", (), None)
    record.path = '/a outcome=sync_success "x" \\'
    record.route = "users"
    line = TextFormatter().format(record)
    assert line.endswith('path="/a outcome=sync_success \\"x\\" \\\\" route=users')
