"""Redis Cluster, Sentinel and TLS set-ups started from `redis-server` for these tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.redis_server import (
    RedisClusterServers,
    RedisServer,
    RedisUnavailable,
    SentinelSetup,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    """A 3-node Redis Cluster (AOF on, so a restarted node keeps its part)."""
    try:
        servers = RedisClusterServers(3).start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield servers
    servers.close()


@pytest.fixture
def sentinel() -> Iterator[SentinelSetup]:
    """A primary, a replica and three sentinels (a test of its own: failovers change it)."""
    try:
        setup = SentinelSetup().start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield setup
    setup.close()


@dataclass
class TlsRedis:
    server: RedisServer
    ca: Path
    cert: Path
    key: Path
    user: str
    password_file: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.server.port}/0"


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_redis() -> Iterator[TlsRedis]:
    """A Redis reachable only over TLS, with client certificates required and an ACL user
    (`sidecar`) as the only way in."""
    work = tempfile.mkdtemp(prefix="sidecar-tls-")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=sidecar test CA",
        cwd=work,
    )
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=sidecar")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=work,
        )
        Path(work, f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=work,
        )
    password = "s3cret-" + os.urandom(4).hex()
    Path(work, "password").write_text(password + "\n")
    server = RedisServer()
    tls_port = server.port
    server.extra = [
        "--port",
        "0",
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        f"{work}/server.pem",
        "--tls-key-file",
        f"{work}/server.key",
        "--tls-ca-cert-file",
        f"{work}/ca.pem",
        "--tls-auth-clients",
        "yes",
        "--user",
        "default",
        "off",
        "--user",
        "sidecar",
        "on",
        f">{password}",
        "~*",
        "&*",
        "+@all",
    ]
    url = f"rediss://sidecar:{password}@127.0.0.1:{tls_port}/0"

    def ready() -> bool:
        return answers_tls(url, work)

    server._ready = ready
    try:
        server.start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield TlsRedis(
        server,
        Path(work, "ca.pem"),
        Path(work, "client.pem"),
        Path(work, "client.key"),
        "sidecar",
        Path(work, "password"),
    )
    server.close()


def answers_tls(url: str, work: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(
            url,
            ssl_ca_certs=f"{work}/ca.pem",
            ssl_certfile=f"{work}/client.pem",
            ssl_keyfile=f"{work}/client.key",
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
