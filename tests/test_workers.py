"""`workers: 2`: two processes share the listeners; a killed one is restarted while the other
keeps serving; one /metrics sums them; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest
from aiohttp import web

from .conftest import FakeApiFactory
from .helpers import until_true
from .processes import SidecarProcess, StartProcess, base_config, metric_value

PASSED = 'sidecar_requests_total{outcome="passthrough",route="-",status_class="2xx"}'


def listening(sidecar: SidecarProcess) -> set[str]:
    """The workers (by index) that said they listen."""
    return {
        str(line.get("worker"))
        for line in sidecar.logs
        if line.get("message") == "sidecar listening" and "worker" in line
    }


def worker_pids(sidecar: SidecarProcess) -> dict[str, int]:
    """The newest pid of each worker, from the supervisor's lines."""
    pids: dict[str, int] = {}
    for line in sidecar.logs:
        if line.get("message") == "worker started":
            pids[str(line["worker"])] = int(line["pid"])
    return pids


async def calls(session: aiohttp.ClientSession, url: str, n: int, method: str = "GET") -> list[int]:
    """`n` requests, each on a connection of its own (so the kernel spreads them)."""
    statuses = []
    for _ in range(n):
        async with session.request(method, url, headers={"Connection": "close"}) as resp:
            await resp.read()
            statuses.append(resp.status)
    return statuses


async def test_two_workers_share_the_listeners_survive_a_kill_and_sum_their_metrics(
    fake_api: FakeApiFactory,
    run_sidecar: StartProcess,
    http: aiohttp.ClientSession,
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    upstream = await fake_api(accept=None, routes={"POST /hang": hang})  # else 200 at once
    sidecar = await run_sidecar(base_config(upstream.url, [], workers=2, shutdown_grace="2s"))
    await sidecar.wait_log(lambda _line: listening(sidecar) == {"0", "1"}, timeout_s=15)
    url = f"{sidecar.proxy_url}/ping"
    assert await calls(http, url, 40) == [200] * 40
    served = {
        str(line.get("worker")) for line in sidecar.logs if line.get("logger") == "sidecar.access"
    }
    assert served == {"0", "1"}  # both took calls
    assert await metric_value(http, sidecar.admin_url, PASSED) == 41  # 40, and the ready check

    # Calls held in both workers; then one worker dies with its share of them. (POSTs: the
    # client would retry a GET cut by the kill on a new connection, and so hide the cut.)
    hang = f"{sidecar.proxy_url}/hang"
    held = [asyncio.create_task(calls(http, hang, 1, "POST")) for _ in range(12)]

    async def in_flight() -> float:
        return await metric_value(http, sidecar.admin_url, "sidecar_requests_in_flight") or 0.0

    async def all_held() -> bool:
        return await in_flight() >= 12

    await until_true(all_held, timeout_s=10, what="12 calls held in the workers")
    first = worker_pids(sidecar)
    os.kill(first["0"], signal.SIGKILL)
    await sidecar.wait_log(lambda x: x.get("message") == "worker exited; restarting it")
    # Gauges sum the live workers only: the killed worker's held calls left the sum.
    still = await in_flight()
    assert 0 < still < 12
    assert await calls(http, url, 20) == [200] * 20  # the other one goes on serving
    await sidecar.wait_log(
        lambda _line: worker_pids(sidecar).get("0") not in (None, first["0"]), timeout_s=15
    )
    await sidecar.wait_log(
        lambda _line: sum(1 for x in sidecar.logs if x.get("message") == "sidecar listening") >= 3,
        timeout_s=15,
    )
    assert await calls(http, url, 20) == [200] * 20
    release.set()
    outcomes = await asyncio.gather(*held, return_exceptions=True)
    cut = [o for o in outcomes if isinstance(o, Exception)]  # those the killed worker held
    assert len(cut) == 12 - still
    assert await in_flight() == 0
    # Counters add up over every worker, the killed one included.
    assert await metric_value(http, sidecar.admin_url, PASSED) == 81 + still
    build = await metric_value(http, sidecar.admin_url, 'sidecar_build_info{version="0.1.0"}')
    assert build == 1

    sidecar.send(signal.SIGTERM)
    assert await sidecar.wait_exit(15) == 0
    pids = worker_pids(sidecar).values()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_workers_die_with_their_supervisor(
    fake_api: FakeApiFactory,
    run_sidecar: StartProcess,
) -> None:
    upstream = await fake_api(accept=None)
    sidecar = await run_sidecar(base_config(upstream.url, [], workers=2, shutdown_grace="1s"))
    await sidecar.wait_log(lambda _line: listening(sidecar) == {"0", "1"}, timeout_s=15)
    pids = list(worker_pids(sidecar).values())
    sidecar.send(signal.SIGKILL)  # no chance to stop them itself
    assert await sidecar.wait_exit(5) == -signal.SIGKILL

    async def gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    await until_true(gone, timeout_s=10, every_s=0.05, what=f"workers {pids} still running")
