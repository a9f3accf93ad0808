"""The private parts of aiohttp and redis-py the sidecar builds on, as it uses them.

`pyproject.toml` pins both libraries to the minor versions these were read from. An upgrade
that moves one of them fails here, naming it, instead of somewhere deep in a test of the proxy:
    aiohttp   the upstream pool (`http.pool`: its protocol base, its response parser, its
              stream reader), the guarded listener (`http.listener`: the request handler's
              state, the server's factory), relayed answers (`http.upstream`: headers
              prepared without invented ones)
    redis-py  the cluster client's node manager (`connections.reseed`, `connections.close`),
              the connection class whose command packer hiredis replaces (`connections`)
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser, RawResponseMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from redis.asyncio.cluster import NodesManager, RedisCluster
from redis.asyncio.connection import AbstractConnection

from sidecar.http.connection import Connection


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_pinned_minor_versions_are_installed() -> None:
    assert version("aiohttp").startswith("3.14."), "aiohttp moved: check the parts below"
    assert version("redis").startswith("6.4."), "redis-py moved: check the parts below"


async def test_the_pool_parses_an_answer_with_aiohttp_s_parser() -> None:
    loop = asyncio.get_running_loop()
    conn = Connection(loop, ("http", "h", 80))
    for name in ("_parser", "_reading_paused", "transport"):
        assert hasattr(conn, name), f"aiohttp's BaseProtocol no longer keeps {name}"
    assert inspect.iscoroutinefunction(BaseProtocol._drain_helper)
    conn.expect(head_request=False)  # builds the parser as the pool does (C or Python)
    assert isinstance(conn._parser, HttpResponseParser)
    messages, upgraded, tail = conn._parser.feed_data(  # type: ignore[union-attr]
        b"HTTP/1.1 202 Accepted\r\nLocation: /jobs/1\r\nContent-Length: 2\r\n\r\nok"
    )
    message, payload = messages[0]
    assert isinstance(message, RawResponseMessage) and isinstance(payload, StreamReader)
    assert (message.code, message.reason, message.headers["Location"]) == (
        202,
        "Accepted",
        "/jobs/1",
    )
    assert (message.should_close, upgraded, tail) == (False, False, b"")
    assert payload.is_eof() and await payload.read() == b"ok"
    for name in ("readexactly", "iter_chunked", "iter_any", "readany", "set_exception"):
        assert callable(getattr(StreamReader, name)), name


def test_the_listener_s_handler_and_server_keep_their_state_where_it_is_read() -> None:
    handler_source = inspect.getsource(RequestHandler)
    for name in ("self._messages", "self._request_in_progress", "self._lingering_time"):
        assert name in handler_source, f"aiohttp's RequestHandler no longer has {name}"
    assert params(RequestHandler.handle_error) == ["self", "request", "status", "exc", "message"]
    server_source = inspect.getsource(Server)
    assert "self._kwargs" in server_source and "self._loop" in server_source
    assert "def __call__" in server_source
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    for keyword in ("request_factory", "handler_cancellation", "loop"):
        assert keyword in params(Server.__init__), keyword


def test_relayed_answers_prepare_their_headers_where_they_are_cleaned() -> None:
    assert inspect.iscoroutinefunction(web.StreamResponse._prepare_headers)
    assert "self._headers" in inspect.getsource(web.StreamResponse.__init__)


@pytest.mark.parametrize("name", ["startup_nodes", "connection_kwargs"])
def test_the_cluster_client_s_node_manager(name: str) -> None:
    assert name in inspect.getsource(NodesManager.__init__), f"NodesManager.{name} moved"
    assert "nodes_manager" in inspect.getsource(RedisCluster.__init__)
    assert params(NodesManager.aclose) == ["self", "attr"]


def test_the_connection_packs_commands_where_hiredis_can_take_over() -> None:
    assert params(AbstractConnection.pack_command) == ["self", "args"]
