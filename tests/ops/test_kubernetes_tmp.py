"""The shipped Kubernetes manifest runs the sidecar on a read-only root filesystem; `workers: N`
needs one writable directory there (their summed metrics live under $TMPDIR, else /tmp), and
the manifest gives it one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOYMENT = Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "deployment.yaml"


def sidecar_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = [d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "sidecar"]
    return spec, container


def test_a_read_only_root_leaves_the_sidecar_a_writable_temporary_directory() -> None:
    spec, container = sidecar_pod()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    temporary = env.get("TMPDIR") or "/tmp"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert temporary in mounts, "no writable volume where the workers keep their metrics"
    assert not mounts[temporary].get("readOnly", False)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[temporary]["name"]]
