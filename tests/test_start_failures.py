"""What no restart can mend ends `sidecar run` at once, in one line, with exit code 78: a
listener's address already in use (one process or `workers: 2`, whose supervisor used to restart
its workers forever, each with a traceback), or no writable directory for the workers' metrics
(a read-only root filesystem); and `workers: 2` runs wherever `$TMPDIR` points at one."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .helpers import until_true
from .processes import REPO, base_config, child_env, write_config

CANNOT_START = 78


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on (without SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def run_to_exit(
    tmp_path: Path, config: dict[str, object], env: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    """`sidecar run` with `config`, to its end (bounded): its exit code and its stderr lines."""
    path = tmp_path / "sidecar.yaml"
    write_config(path, config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "run",
        "-c",
        str(path),
        cwd=REPO,
        env=child_env() | (env or {}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            _, stderr = await proc.communicate()
    except TimeoutError:
        # Still running (restarting its workers, say): stop it and all it started, then fail.
        proc.terminate()
        async with asyncio.timeout(20):
            _, stderr = await proc.communicate()
        pytest.fail(f"sidecar run did not exit by itself:\n{stderr.decode()[-2000:]}")
    assert proc.returncode is not None
    return proc.returncode, stderr.decode().splitlines()


def errors(lines: list[str]) -> list[str]:
    return [json.loads(line)["message"] for line in lines if '"level":"error"' in line]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", ["listen", "admin_listen"])
async def test_an_address_in_use_ends_the_run_once_with_the_reason(
    tmp_path: Path, busy_port: int, workers: int, which: str
) -> None:
    config = base_config("http://127.0.0.1:9", [], workers=workers, admin_token="x")
    config[which] = f"127.0.0.1:{busy_port}"
    code, lines = await run_to_exit(tmp_path, config)
    assert code == CANNOT_START
    assert errors(lines) == [
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use; exiting"
    ]
    text = "\n".join(lines)
    assert "Traceback" not in text and "restarting" not in text


async def test_workers_without_a_writable_metrics_directory_end_the_run_once(
    tmp_path: Path,
) -> None:
    config = base_config("http://127.0.0.1:9", [], workers=2, admin_token="x")
    unwritable = "/proc/1/no-such-place"  # as a read-only root filesystem leaves /tmp
    code, lines = await run_to_exit(tmp_path, config, {"TMPDIR": unwritable})
    assert code == CANNOT_START
    (said,) = errors(lines)
    assert said.startswith(f"workers need a writable directory for their metrics, and {unwritable}")
    assert "point TMPDIR at it" in said
    assert "Traceback" not in "\n".join(lines)


async def test_workers_keep_their_metrics_in_tmpdir(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    writable = tmp_path / "scratch"  # the volume mounted on a read-only root
    writable.mkdir()
    config = base_config("http://127.0.0.1:9", [], workers=2, admin_token="x")
    path = tmp_path / "sidecar.yaml"
    write_config(path, config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "run",
        "-c",
        str(path),
        cwd=REPO,
        env=child_env() | {"TMPDIR": str(writable)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def serving() -> bool:
            try:
                async with http.get(f"http://{config['admin_listen']}/metrics") as resp:
                    return resp.status == 200 and "sidecar_build_info" in await resp.text()
            except aiohttp.ClientConnectionError:
                return False

        await until_true(serving, what="the workers' /metrics")
        (metrics_dir,) = writable.iterdir()
        assert metrics_dir.name.startswith("sidecar-metrics-")
        assert any(metrics_dir.glob("*.db"))  # the workers' samples
    finally:
        proc.terminate()
        async with asyncio.timeout(20):
            await proc.wait()
    assert list(writable.iterdir()) == []  # removed when the supervisor stopped
