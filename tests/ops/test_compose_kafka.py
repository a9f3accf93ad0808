"""The Kafka variant of the docker-compose example (examples/compose/kafka/): it parses, its
sidecar config passes `sidecar check` with the environment compose gives it, the files it builds
from exist, and the services agree: the sidecar's source is the Kafka service's advertised
listener, the topic the init service creates is the one the route waits on and the API
publishes to, the API is the sidecar's upstream, Redis is its store. No Docker engine is
needed (Apache Kafka's image cannot run here; the same config runs against Tansu in
tests/sources/test_examples.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sidecar.cli import main as sidecar_main
from sidecar.config import Settings, kafka_servers, load_settings

ROOT = Path(__file__).resolve().parents[2]
KAFKA = ROOT / "examples" / "compose" / "kafka"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KAFKA / "compose.yaml").read_text())
    return document


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def environment(svc: dict[str, Any]) -> dict[str, str]:
    return {
        name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        for name, value in svc.get("environment", {}).items()
    }


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.fixture(autouse=True)
def _compose_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)
    for name, value in environment(service("sidecar")).items():
        monkeypatch.setenv(name, value)
    yield


def settings() -> Settings:
    return load_settings(KAFKA / "sidecar.yaml", env=environment(service("sidecar")))


def test_the_services_are_all_there_and_kafka_is_apaches_own() -> None:
    assert set(compose()["services"]) == {"kafka", "topics", "redis", "api", "sidecar"}
    assert service("kafka")["image"].startswith("apache/kafka:")
    assert service("topics")["image"] == service("kafka")["image"]
    kafka = environment(service("kafka"))
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics are the API's


def test_builds_and_mounts_refer_to_files_that_exist() -> None:
    for name in ("api", "sidecar"):
        build = service(name)["build"]
        assert (KAFKA / build["context"] / build["dockerfile"]).is_file(), name
    assert (KAFKA / service("sidecar")["build"]["context"]).resolve() == ROOT
    source, target = service("sidecar")["volumes"][0].split(":")[:2]
    assert (KAFKA / source).resolve() == KAFKA / "sidecar.yaml"
    assert target == "/etc/sidecar/sidecar.yaml"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "'/tmp/src[all]'" in dockerfile  # the image has every broker's library


def test_the_sidecar_config_passes_sidecar_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert sidecar_main(["check", "-c", str(KAFKA / "sidecar.yaml")]) == 0
    assert "OK, 2 route(s); upstream http://api:8000" in capsys.readouterr().out


def test_source_topic_api_and_redis_agree() -> None:
    loaded = settings()
    [(name, source)] = loaded.sources.items()
    kafka = environment(service("kafka"))
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split("://", 1)[1]
    assert (source.kind, kafka_servers(source.url)) == ("kafka", [advertised])
    [route] = [r for r in loaded.routes if r.wait is not None]
    assert route.wait is not None and route.wait.stream is not None
    assert (route.wait.stream.source, route.wait.stream.key) == (name, "orders.completed")
    topics = service("topics")["command"]
    assert arg(topics, "--topic") == route.wait.stream.key
    assert arg(topics, "--bootstrap-server") == advertised
    api = service("api")["command"]
    assert arg(api, "--topic") == route.wait.stream.key
    assert arg(api, "--bootstrap") == advertised
    upstream = urlsplit(str(loaded.upstream))
    assert (upstream.hostname, upstream.port) == ("api", int(arg(api, "--port")))
    assert loaded.redis_url == "redis://redis:6379/0"
    depends = service("sidecar")["depends_on"]
    assert depends["topics"]["condition"] == "service_completed_successfully"
