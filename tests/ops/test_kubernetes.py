"""The Kubernetes manifests (examples/kubernetes/): they parse, the embedded sidecar config passes
`sidecar check` with the environment the pod gives it, and everything they name exists: ports,
probe paths, labels, Secret and ConfigMap keys, the config file's path; the timings of a pod's
shutdown add up."""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import main as sidecar_main
from sidecar.config import Settings, parse_settings

from .promql import RULES, load_rules

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "examples" / "kubernetes"
Manifest = dict[str, Any]


@pytest.fixture(autouse=True)
def _no_sidecar_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's own SIDECAR_* variables must not leak into the config checks."""
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)
    yield


def manifests() -> dict[tuple[str, str], Manifest]:
    """Every document of every manifest file, by (kind, name)."""
    found: dict[tuple[str, str], Manifest] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def one(kind: str, name: str | None = None) -> Manifest:
    """The one manifest of `kind` (named `name` when several)."""
    docs = [d for (k, n), d in manifests().items() if k == kind and name in (None, n)]
    assert len(docs) == 1, f"{kind} {name or ''}: {len(docs)} found"
    return docs[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment", "users-api")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    found = [c for c in pod_spec()["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def config_text() -> str:
    text: str = one("ConfigMap", "users-api-sidecar")["data"]["sidecar.yaml"]
    return text


def pod_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod gets it, values from the shipped Secret included."""
    found = manifests()
    env = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        env[var["name"]] = found[("Secret", ref["name"])]["stringData"][ref["key"]]
    return env


def settings() -> Settings:
    raw = yaml.safe_load(config_text())
    return parse_settings(raw, "configmap.yaml", env=pod_env(container("sidecar")))


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def prestop_sleep_s(c: dict[str, Any]) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def test_every_manifest_parses_and_kustomize_lists_them() -> None:
    kinds = {kind for kind, _ in manifests()}
    assert kinds >= {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "redis.yaml"}
    assert sorted(listed) == sorted(files)


def test_the_configmap_holds_a_config_sidecar_check_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_text())
    for name, value in pod_env(container("sidecar")).items():
        monkeypatch.setenv(name, value)
    assert sidecar_main(["check", "-c", str(path)]) == 0
    assert "OK, 2 route(s); upstream http://127.0.0.1:8000" in capsys.readouterr().out


def test_the_config_needs_exactly_the_variables_the_pod_provides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needed = set(re.findall(r"\$\{(\w+)\}", config_text()))
    assert needed == {"REDIS_URL", "SIDECAR_ADMIN_TOKEN", "SIDECAR_HASH_KEY"}
    assert needed <= set(pod_env(container("sidecar")))
    loaded = settings()
    assert loaded.admin_token is not None
    assert loaded.tenancy.hash_key is not None
    assert loaded.redis_url == one("Secret")["stringData"]["redis-url"]


def test_the_listeners_match_the_container_ports_and_the_api_is_local() -> None:
    loaded, sidecar, api = settings(), container("sidecar"), container("api")
    assert ports(sidecar) == {"http": port_of(loaded.listen), "admin": port_of(loaded.admin_listen)}
    # Probes and Prometheus come from outside the pod.
    assert loaded.admin_listen.startswith("0.0.0.0:")
    assert loaded.listen.startswith("0.0.0.0:")
    upstream = str(loaded.upstream).rstrip("/")
    args = api["args"]
    assert upstream == f"http://127.0.0.1:{args[args.index('--port') + 1]}"
    assert args[args.index("--host") + 1] == "127.0.0.1"  # reachable through the sidecar only
    assert "ports" not in api


def test_probes_use_the_admin_port_healthz_and_readyz() -> None:
    sidecar = container("sidecar")
    live, ready = sidecar["livenessProbe"]["httpGet"], sidecar["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert live["port"] == ready["port"] == "admin"
    assert live["port"] in ports(sidecar)


def test_services_select_the_pods_and_target_ports_that_exist() -> None:
    deployment = one("Deployment", "users-api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    sidecar_ports = ports(container("sidecar"))
    proxy = one("Service", "users-api")
    assert proxy["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["targetPort"]) for p in proxy["spec"]["ports"]] == [(8080, "http")]
    admin = one("Service", "users-api-sidecar-admin")
    assert admin["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["name"], p["targetPort"]) for p in admin["spec"]["ports"]] == [("admin", "admin")]
    for service in (proxy, admin):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in sidecar_ports


def test_the_servicemonitor_scrapes_metrics_on_the_admin_service_only() -> None:
    monitor = one("ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    selected = [
        d
        for (k, _), d in manifests().items()
        if k == "Service" and wanted <= d["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["users-api-sidecar-admin"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


def test_the_pdb_selects_the_pods_and_leaves_room_to_drain() -> None:
    deployment = one("Deployment", "users-api")
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_secret_and_configmap_references_exist() -> None:
    found = manifests()
    spec = pod_spec()
    references = 0
    for c in spec["containers"]:
        for var in c.get("env", []):
            source = var.get("valueFrom", {})
            for ref_kind, kind, field in (
                ("secretKeyRef", "Secret", "stringData"),
                ("configMapKeyRef", "ConfigMap", "data"),
            ):
                if ref_kind in source:
                    ref = source[ref_kind]
                    target = found[(kind, ref["name"])]
                    assert ref["key"] in target.get(field, {}) | target.get("data", {}), var
                    references += 1
    assert references == 4  # REDIS_URL (both containers), the admin token and the hash key
    volumes = {v["name"]: v for v in spec["volumes"]}
    config = volumes["config"]["configMap"]
    data = found[("ConfigMap", config["name"])]["data"]
    assert [item["key"] for item in config["items"]] == ["sidecar.yaml"]
    assert set(data) == {"sidecar.yaml"}
    # The file the sidecar is told to read is the one mounted.
    sidecar = container("sidecar")
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "config")
    path = f"{mount['mountPath']}/{config['items'][0]['path']}"
    assert sidecar["args"] == ["-c", path]


def test_shutdown_timings_add_up() -> None:
    loaded, sidecar, api = settings(), container("sidecar"), container("api")
    grace_period = pod_spec()["terminationGracePeriodSeconds"]
    longest_budget = max(r.budget for r in loaded.routes if r.is_sync)
    # The pod is killed only after the preStop sleep and the sidecar's whole drain.
    assert grace_period > prestop_sleep_s(sidecar) + loaded.shutdown_grace
    # A drain lets every held call run to its budget.
    assert loaded.shutdown_grace >= longest_budget
    # The API keeps serving (and completing) until the sidecar stopped taking and held calls ended.
    assert prestop_sleep_s(api) >= prestop_sleep_s(sidecar) + longest_budget
    assert prestop_sleep_s(api) < grace_period


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def test_every_container_has_requests_and_a_memory_limit() -> None:
    for c in pod_spec()["containers"]:
        resources = c["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), c["name"]
        assert mebibytes(resources["limits"]["memory"]) >= mebibytes(
            resources["requests"]["memory"]
        )
    # The sidecar's limit holds its route's max_waiting calls at ~16 KiB each over ~55 MiB idle.
    held = max(r.max_waiting for r in settings().routes if r.is_sync)
    limit = mebibytes(container("sidecar")["resources"]["limits"]["memory"])
    assert limit >= 55 + held * 16 / 1024


def test_the_prometheusrule_holds_the_rules_of_examples_observability() -> None:
    assert one("PrometheusRule")["spec"] == load_rules(RULES)


def test_the_example_api_image_has_what_it_copies_and_needs_only_aiohttp_and_redis() -> None:
    dockerfile = (ROOT / "examples" / "users" / "Dockerfile").read_text()
    context = ROOT / "examples"
    copies = re.findall(r"^COPY (.+) \S+$", dockerfile, re.M)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (context / source).is_file(), source
    tree = ast.parse((context / "users" / "api.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0)
        for alias in node.names
    }
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"aiohttp", "redis"}
    assert container("api")["image"].startswith("sidecar-users-api:")
