"""The `sidecar` command: `check` prints the routes or every problem, `schema`, `--version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import __version__
from sidecar.cli import main
from sidecar.config import json_schema

ROOT = Path(__file__).resolve().parent.parent

VALID = """
    upstream: http://api:8000
    redis_url: redis://127.0.0.1:6379/0
    routes:
      - name: create-user
        method: POST
        path: /api/users
        wait: {stream: {key: users.events, success: ['CreateUser::UserCreated']}, poll: {}}
      - name: create-report
        method: POST
        path: /api/reports
        budget: 30s
        correlation: {source: location}
        wait: {poll: {field: /status, success: [done]}}
      - {name: get-user, method: GET, path: '/users/{id}'}
    """

THREE_MISTAKES = """
    listen: nope
    routes:
      - {name: a, path: /a, wait: {poll: {interval: soon}}}
    webhooks: {timout: 5s}
    """


@pytest.fixture(autouse=True)
def _no_sidecar_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's own SIDECAR_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)
    yield


def write(tmp_path: Path, text: str, name: str = "sidecar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_check_valid_file_prints_the_routes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    # Valid, with what is likely not meant said on stderr (the exit status stays 0).
    assert err.splitlines() == [
        "warning: admin_token is unset: the admin API has no operator (only clients, each with"
        " its own subscriptions)",
        "warning: tenancy.hash_key is unset: credential hashes derive from a random key in "
        "Redis; set it, or clients lose their subscriptions when that changes",
    ]
    assert out.splitlines()[:-1] == [
        f"{path}: OK, 3 route(s); upstream http://api:8000",
        "ROUTE          METHOD  PATH          WAIT                      BUDGET  CORRELATION",
        "create-user    POST    /api/users    stream:users.events+poll  10s     request",
        "create-report  POST    /api/reports  poll                      30s     location",
        "get-user       GET     /users/{id}   pass-through              10s     request",
    ]
    assert out.splitlines()[-1].startswith("clients.max_connections: auto comes to ")


def test_check_warns_that_the_session_client_is_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "upstream: http://api:8000\nproxy: {client: session}\n")
    assert main(["check", "-c", str(path)]) == 0
    assert (
        "warning: proxy.client: session is ignored: calls, polls and GETs of a Location all go "
        "through the one upstream client, the keep-alive pool (remove the key)"
    ) in capsys.readouterr().err.splitlines()


def test_check_without_routes_prints_no_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "upstream: http://api:8000\nclients: {max_connections: 5000}\n")
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK, 0 route(s); upstream http://api:8000\n"


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (
            "upstream: http://api:8000\n",
            "clients.max_connections: auto comes to 18744 per listener on this machine (the "
            "check machine's open-files limit 20000, raised to its hard limit as `sidecar run` "
            "does, less 1256 kept for the upstream pool 1000, the rest 256); where the sidecar "
            "runs, its own limit decides, stated at start",
        ),
        (
            "upstream: http://api:8000\nredis_url: redis://r:6379/0\nworkers: 2\n"
            "proxy: {max_connections: 200}\n",
            "clients.max_connections: auto comes to 19336 per listener in each worker on this "
            "machine (the check machine's open-files limit 20000, raised to its hard limit as "
            "`sidecar run` does, less 664 kept for the upstream pool 200, Redis 80, webhook "
            "deliveries 128, the rest 256); where the sidecar runs, its own limit decides, stated "
            "at start",
        ),
    ],
)
def test_check_says_what_auto_connections_come_to_on_the_check_machine(
    config: str,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sidecar.process.raise_to_hard_limit", lambda: 20_000)
    assert main(["check", "-c", str(write(tmp_path, config))]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == said


def test_check_reference_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(ROOT / "config" / "sidecar.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK, 3 route(s)" in out
    assert "create-user    POST    /api/users    stream:users.events+poll" in out


def test_check_reports_every_mistake_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    with pytest.raises(SystemExit) as exited:
        main(["check", "-c", str(path)])
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}: invalid configuration (3 problem(s)):\n"
        "  - listen: invalid address 'nope' (use host:port, e.g. 0.0.0.0:8080)\n"
        "  - routes[0].wait.poll.interval: invalid duration 'soon' "
        "(use 250ms, 10s, 2m or seconds)\n"
        "  - webhooks.timout: unknown key (check the spelling against config/sidecar.yaml)\n"
    )


def test_check_uses_sidecar_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "upstream: http://from-env-path:8000\n", "elsewhere.yaml")
    monkeypatch.setenv("SIDECAR_CONFIG", str(path))
    assert main(["check"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{path}: OK, 0 route(s); upstream http://from-env-path:8000"
    )


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SystemExit) as exited:
        main(["check", "-c", str(path)])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        f"{path}: invalid configuration (1 problem(s)):\n"
        "  - cannot read the file: No such file or directory\n"
    )


def test_check_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "routes:\n  - name: a\n    path: [/a\n")
    with pytest.raises(SystemExit) as exited:
        main(["check", "-c", str(path)])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        f"{path}: invalid configuration (1 problem(s)):\n"
        "  - line 4, column 1: invalid YAML (expected ',' or ']', but got '<stream end>')\n"
    )


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    schema = json.loads(out)
    assert schema == json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"listen", "upstream", "routes", "webhooks"} <= set(schema["properties"])
    assert out == (ROOT / "config" / "sidecar.schema.json").read_text()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"sidecar {__version__}\n"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "required: command" in capsys.readouterr().err


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_real_process_version() -> None:
    result = _run("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"sidecar {__version__}\n", "")


def test_real_process_check_bad_file_has_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    result = _run("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: invalid configuration (3 problem(s)):",
        "  - listen: invalid address 'nope' (use host:port, e.g. 0.0.0.0:8080)",
        "  - routes[0].wait.poll.interval: invalid duration 'soon' (use 250ms, 10s, 2m or seconds)",
        "  - webhooks.timout: unknown key (check the spelling against config/sidecar.yaml)",
    ]


def test_real_process_checks_the_default_path() -> None:
    """Run from the repo root, `sidecar check` reads config/sidecar.yaml."""
    result = _run("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config/sidecar.yaml: OK, 3 route(s)")


def test_export_nginx_writes_the_front_of_the_routes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    assert main(["export", "nginx", "-c", str(path), "--sidecar", "10.0.0.5:8080"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"# Generated by `sidecar export nginx` from {path}:\n# a front ")
    assert "    server 10.0.0.5:8080;\n" in out
    assert '    "~^POST /api/users$"    sidecar;  # create-user (synchronised)\n' in out
    assert "    listen 0.0.0.0:80;\n" in out
    # Behind the front the sidecar must trust the X-Forwarded-* the front sets.
    assert err.startswith("warning: proxy.trust_forwarded_headers is false")


def test_export_nginx_to_a_file_with_the_sidecars_own_listen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = (
        VALID.rstrip(" ") + "    listen: 0.0.0.0:8080\n    proxy: {trust_forwarded_headers: true}\n"
    )
    path = write(tmp_path, config)
    out = tmp_path / "front.conf"
    argv = ["export", "nginx", "-c", str(path), "-o", str(out), "--listen", "8000"]
    assert main([*argv, "--server-name", "api.example.com"]) == 0
    assert capsys.readouterr() == ("", "")
    text = out.read_text()
    assert "    server 127.0.0.1:8080;\n" in text  # the wildcard listen, reached on loopback
    assert "    listen 8000;\n    server_name api.example.com;\n" in text


def test_export_nginx_refuses_to_listen_where_the_sidecar_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID.rstrip(" ") + "    listen: 0.0.0.0:8080\n")
    assert main(["export", "nginx", "-c", str(path), "--listen", "8080"]) == 2
    assert "--listen 8080 is the sidecar's own address" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--listen", "80; include /etc/passwd"], "--listen '80; include /etc/passwd': use"),
        (["--sidecar", "127.0.0.1"], "--sidecar '127.0.0.1': use host:port or [v6]:port"),
        (["--server-name", "a;b"], "--server-name 'a;b': names separated by spaces"),
    ],
)
def test_export_nginx_refuses_what_nginx_could_not_read(
    option: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    assert main(["export", "nginx", "-c", str(path), *option]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(said)
