"""The docker-compose example (examples/compose/): it parses, its sidecar config passes `sidecar
check` with the environment compose gives it, every file it mounts or builds from exists, and the
services agree on names, ports and paths (sidecar ↔ api ↔ redis, Prometheus ↔ sidecar and its
rules, Grafana ↔ Prometheus and the dashboard). No Docker engine is needed."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sidecar.cli import main as sidecar_main
from sidecar.config import Settings, load_settings

from .promql import DASHBOARD, RULES
from .test_observability import tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "examples" / "compose"


@pytest.fixture(autouse=True)
def _compose_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The sidecar container's environment only (a developer's SIDECAR_* left out)."""
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)
    for name, value in environment(service("sidecar")).items():
        monkeypatch.setenv(name, value)
    yield


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return document


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as compose sets it, `${VAR:-default}` taken at its default."""
    return {
        name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        for name, value in svc.get("environment", {}).items()
    }


def mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container path → host path (named volumes left out)."""
    found = {}
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (COMPOSE / source).resolve()
    return found


def sidecar_settings() -> Settings:
    return load_settings(COMPOSE / "sidecar.yaml", env=environment(service("sidecar")))


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def arg(command: list[str], flag: str) -> str:
    """The value of `--flag value` or `--flag=value` in a command."""
    for i, word in enumerate(command):
        if word == flag:
            return command[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {command}")


def test_the_services_are_all_there() -> None:
    assert set(compose()["services"]) == {"redis", "api", "sidecar", "prometheus", "grafana"}
    assert service("redis")["command"][-2:] == ["--appendonly", "yes"]


def test_builds_and_bind_mounts_refer_to_files_that_exist() -> None:
    for name in ("api", "sidecar"):
        build = service(name)["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).is_file(), name
    assert (COMPOSE / service("sidecar")["build"]["context"]).resolve() == ROOT
    for name, svc in compose()["services"].items():
        for target, source in mounts(svc).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_the_sidecar_config_passes_sidecar_check(capsys: pytest.CaptureFixture[str]) -> None:
    mounted = mounts(service("sidecar"))
    # Mounted where the image's default command reads it.
    assert 'CMD ["-c", "/etc/sidecar/sidecar.yaml"]' in (ROOT / "Dockerfile").read_text()
    assert mounted["/etc/sidecar/sidecar.yaml"] == COMPOSE / "sidecar.yaml"
    assert sidecar_main(["check", "-c", str(COMPOSE / "sidecar.yaml")]) == 0
    assert "OK, 2 route(s); upstream http://api:8000" in capsys.readouterr().out
    loaded = sidecar_settings()
    assert loaded.admin_token is not None and loaded.tenancy.hash_key is not None


def test_the_sidecar_reaches_the_api_and_redis_by_their_service_names() -> None:
    loaded = sidecar_settings()
    api = service("api")["command"]
    assert host_port(str(loaded.upstream)) == ("api", int(arg(api, "--port")))
    assert host_port(arg(api, "--redis-url")) == ("redis", 6379)
    assert loaded.redis_url is not None
    assert host_port(loaded.redis_url) == ("redis", 6379)
    assert "ports" not in service("api")  # reached through the sidecar only


def test_published_ports_match_the_listeners_and_the_drain_fits_the_stop_grace() -> None:
    loaded = sidecar_settings()
    published = {int(p.rsplit(":", 1)[1]) for p in service("sidecar")["ports"]}
    assert published == {host_port(loaded.listen)[1], host_port(loaded.admin_listen)[1]}
    assert loaded.admin_listen.startswith("0.0.0.0:")  # Prometheus is another container
    grace = service("sidecar")["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > loaded.shutdown_grace


def test_prometheus_scrapes_the_admin_listener_and_loads_the_rules(tmp_path: Path) -> None:
    prometheus = service("prometheus")
    mounted = mounts(prometheus)
    config_path = mounted[arg(prometheus["command"], "--config.file")]
    config = yaml.safe_load(config_path.read_text())
    [job] = config["scrape_configs"]
    [target] = job["static_configs"][0]["targets"]
    assert host_port(target) == ("sidecar", host_port(sidecar_settings().admin_listen)[1])
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [rule_file] = config["rule_files"]
    assert mounted[rule_file] == RULES
    # promtool checks the config with the rules where the container has them.
    config["rule_files"] = [str(RULES)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(checked)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = service("grafana")
    mounted = mounts(grafana)
    provisioning = mounted["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    assert host_port(datasource["url"]) == ("prometheus", 9090)
    assert any(p.endswith(":9090") for p in service("prometheus")["ports"])
    [provider] = yaml.safe_load((provisioning / "dashboards" / "sidecar.yml").read_text())[
        "providers"
    ]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = {t: s for t, s in mounted.items() if PurePosixPath(t).parent == folder}
    assert list(dashboards.values()) == [DASHBOARD]
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards
