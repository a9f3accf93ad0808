"""The Grafana dashboard and the Prometheus alert rules (examples/observability/) against the real
thing: promtool checks the rules; a real Prometheus scrapes a real sidecar that served every kind
of call, and every metric the dashboard and the rules name must be among what it scraped, every
query must run, and the alerts must fire on what they are about (and not otherwise)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from devtools.redis_server import RedisServer, free_port
from sidecar.state import ADMIN_URL
from sidecar.webhooks.signing import new_secret

from ..conftest import SidecarFactory, Upstream
from ..helpers import metric, until, until_true
from .promql import (
    RULES,
    dashboard_queries,
    grafana_to_promql,
    load_dashboard,
    load_rules,
    metric_names,
    panels,
    rules,
    variable_queries,
    variable_query_names,
)

INSTALL_HINT = (
    "Prometheus is not installed: these tests run the real prometheus and promtool. "
    "Install them with `apt-get install prometheus` (CI's .ci/run does)."
)
# What the dashboard must show, by metric: calls per route and outcome, how long they wait, how
# many are held against the cap, Redis and the completion stream's lag, webhook attempts, queues
# and dead letters, and fallbacks to 202. Its queries must name every one (read by the metric
# name extractor, whose own test below keeps that check honest).
DASHBOARD_METRICS = {
    "sidecar_requests_total",
    "sidecar_wait_duration_seconds_bucket",
    "sidecar_waiting_requests",
    "sidecar_route_max_waiting",
    "sidecar_redis_up",
    "sidecar_stream_lag_seconds",
    "sidecar_webhook_attempts_total",
    "sidecar_webhook_queue_depth",
    "sidecar_webhook_dead_letters_total",
    "sidecar_fallbacks_total",
}
OK, NOT_OK = "CreateUser::UserCreated", "CreateUser::UserNotCreated"
DELIVERED_USER = {"event_type": "create-user.succeeded", "result": "delivered"}
SCRAPE = "250ms"
DEADLINE_S = 10.0


def tool(name: str) -> str:
    """Path of `prometheus` or `promtool`; the test fails (not skips) when it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name}: not found. {INSTALL_HINT}", pytrace=False)
    return found


# ---------------------------------------------------------------------------------------------
# The files themselves
# ---------------------------------------------------------------------------------------------


def test_the_metric_name_extractor_finds_names_and_only_names() -> None:
    expr = (
        'sum by (route) (rate(sidecar_a_total{route=~"$route", x="y z"}[5m] offset 1m))\n'
        "/ on (instance) group_left max without (le) (sidecar_b) > bool 0.5 or vector(1)"
        ' and histogram_quantile(0.9, sidecar_c_bucket) unless label_replace(up, "a", "", "", "")'
    )
    assert metric_names(expr) == {"sidecar_a_total", "sidecar_b", "sidecar_c_bucket", "up"}
    assert variable_query_names('label_values(sidecar_d{job=~"$job"}, route)') == {"sidecar_d"}
    assert variable_query_names("label_values(job)") == set()


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules(load_rules()))} rules found" in result.stdout


def test_every_alert_has_a_duration_a_severity_and_annotations() -> None:
    found = rules(load_rules())
    assert {rule["alert"] for rule in found} >= {
        "SidecarRedisDown",
        "SidecarSyncRatioLow",
        "SidecarLoadShedding",
        "SidecarWebhookDeadLetters",
        "SidecarWebhookQueueGrowing",
    }
    for rule in found:
        assert "alert" in rule, f"only alerting rules here: {rule}"
        assert rule.get("for"), f"{rule['alert']}: no `for:` duration"
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
        assert all(name.startswith("sidecar_") for name in metric_names(rule["expr"]))
        assert "job" in rule["expr"], f"{rule['alert']}: does not keep sidecars apart by job"


def test_the_dashboard_imports_anywhere_and_has_per_route_panels() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["route"]["type"] == "query"
    assert variables["route"]["includeAll"] and variables["route"]["multi"]
    every = list(panels(dashboard))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert [p["title"] for p in every if p.get("repeat") == "route"] == ["Route $route"]
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        # Bound to the variable, never to one installation's data source uid.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard)))
    assert used >= DASHBOARD_METRICS


# ---------------------------------------------------------------------------------------------
# Against a real Prometheus scraping a real sidecar
# ---------------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A prometheus process of this test's own and its HTTP API."""

    url: str
    http: aiohttp.ClientSession
    proc: asyncio.subprocess.Process

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data`, or fail with Prometheus's error."""
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll Prometheus's API until `check()` holds, at most DEADLINE_S."""
        await until_true(check, DEADLINE_S, every_s=0.1, what=f"Prometheus never saw {what}")

    async def active_alerts(self) -> set[tuple[str, str]]:
        """(alert name, route or '') of every pending or firing alert."""
        data = await self.api("alerts")
        return {
            (a["labels"]["alertname"], a["labels"].get("route", ""))
            for a in data["alerts"]
            if a["state"] in {"pending", "firing"}
        }


StartPrometheus = Callable[[str], Awaitable[Prometheus]]


@pytest.fixture
async def start_prometheus(tmp_path: Path) -> AsyncIterator[StartPrometheus]:
    """Start Prometheus (own port, own storage, own config) scraping one target quickly."""
    binary = tool("prometheus")
    log_path = tmp_path / "prometheus.log"
    started: list[Prometheus] = []
    with log_path.open("wb") as log:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def start(target: str) -> Prometheus:
                config = {
                    "global": {
                        "scrape_interval": SCRAPE,
                        "scrape_timeout": SCRAPE,
                        "evaluation_interval": SCRAPE,
                    },
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "sidecar", "static_configs": [{"targets": [target]}]}
                    ],
                }
                config_path = tmp_path / "prometheus.yml"
                config_path.write_text(yaml.safe_dump(config))
                port = free_port()
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=log,
                )
                prometheus = Prometheus(f"http://127.0.0.1:{port}", http, proc)
                started.append(prometheus)

                async def ready() -> bool:
                    assert proc.returncode is None, log_path.read_text()
                    try:
                        async with http.get(f"{prometheus.url}/-/ready") as resp:
                            return resp.status == 200
                    except aiohttp.ClientConnectionError:
                        return False

                await prometheus.until(ready, "itself ready")
                return prometheus

            try:
                yield start
            finally:
                for prometheus in started:
                    with contextlib.suppress(ProcessLookupError):
                        prometheus.proc.terminate()
                    await prometheus.proc.wait()


def backend(redis: aioredis.Redis, stream: str) -> web.Application:
    """A fake asynchronous API: 202 + Location for everything; /api/users publishes its
    completion (a failure for usernames starting with "fail") before answering; reports are
    done by the first poll; nothing ever completes /api/slow and /api/shed calls."""

    async def create_user(request: web.Request) -> web.Response:
        cid = request.headers["X-Correlation-ID"]
        body = await request.json()
        failed = body["username"].startswith("fail")
        payload = {"reason": "username rejected"} if failed else {"id": cid, **body}
        fields = {
            "correlation_id": cid,
            "type": NOT_OK if failed else OK,
            "payload": orjson.dumps(payload).decode(),
        }
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
        return web.json_response({"id": cid}, status=202, headers={"Location": f"/users/{cid}"})

    async def accept(request: web.Request) -> web.Response:
        job = uuid.uuid4().hex
        return web.json_response({"id": job}, status=202, headers={"Location": f"/jobs/{job}"})

    async def job(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "status": "done"})

    app = web.Application()
    app.router.add_post("/api/users", create_user)
    app.router.add_post("/api/{kind:slow|shed|reports}", accept)
    app.router.add_get("/jobs/{id}", job)
    return app


def receivers() -> web.Application:
    """Webhook receivers: /good answers 204, /bad answers 500 to everything."""

    async def good(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def bad(request: web.Request) -> web.Response:
        return web.Response(status=500, text="receiver broken")

    app = web.Application()
    app.router.add_post("/good", good)
    app.router.add_post("/bad", bad)
    return app


class Traffic:
    """Calls of every kind through the sidecar under test."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any], expected: int) -> None:
        async with self.client.post(path, json=body) as resp:
            assert resp.status == expected, f"{path}: {resp.status} {await resp.text()}"

    async def every_kind(self) -> None:
        await self.post("/api/users", {"username": "felipe"}, 200)  # sync_success (stream)
        await self.post("/api/users", {"username": "failing"}, 500)  # sync_failure
        await self.post("/api/slow", {}, 202)  # fallback_async, reason budget
        await self.post("/api/shed", {}, 202)  # fallback_async, reason shed
        await self.post("/api/reports", {}, 200)  # sync_success by polling the Location
        await self.post("/api/broken", {}, 502)  # upstream_error (connect)
        await self.post("/not-a-route", {}, 404)  # passthrough


async def test_prometheus_scrapes_every_series_the_dashboard_and_rules_use_and_alerts_fire(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    aiohttp_server: Any,
    own_redis: RedisServer,
    start_prometheus: StartPrometheus,
) -> None:
    key_prefix = f"test-{uuid.uuid4().hex[:12]}"
    stream = f"{key_prefix}:users.events"
    redis: aioredis.Redis = aioredis.Redis.from_url(own_redis.url)
    try:
        hooks = await aiohttp_server(receivers())
        upstream = await start_upstream(backend(redis, stream))
        wait = {"stream": {"key": stream, "success": [OK], "failure": [NOT_OK]}}
        sidecar = await start_sidecar(
            upstream,
            redis_url=own_redis.url,
            key_prefix=key_prefix,
            stream_reader={"block": "50ms"},
            webhooks={
                "allow_private_targets": True,
                "schedule": ["50ms"],  # one retry, then dead
                # Every attempt made when due: an open breaker would hold the bad receiver's
                # retries back past the time this test gives the alerts.
                "breaker": {"enabled": False},
                "timeout": "2s",
                "subscriptions": [
                    {"id": name, "url": str(hooks.make_url(f"/{name}")), "secret": new_secret()}
                    for name in ("good", "bad")
                ],
            },
            routes=[
                {"name": "create-user", "method": "POST", "path": "/api/users", "wait": wait},
                {
                    "name": "slow",
                    "method": "POST",
                    "path": "/api/slow",
                    "budget": "100ms",
                    "wait": wait,
                },
                {
                    "name": "shed",
                    "method": "POST",
                    "path": "/api/shed",
                    "max_waiting": 0,  # every call is shed
                    "wait": wait,
                },
                {
                    "name": "create-report",
                    "method": "POST",
                    "path": "/api/reports",
                    "correlation": {"source": "location"},
                    "wait": {"poll": {"interval": "20ms", "max_interval": "20ms"}},
                },
                {
                    "name": "broken",
                    "method": "POST",
                    "path": "/api/broken",
                    "upstream": f"http://127.0.0.1:{free_port()}",
                },
            ],
        )
        traffic = Traffic(sidecar)

        # 1. Every kind of call, so that every series exists before Prometheus first looks.
        await traffic.every_kind()
        await until(lambda: metric(sidecar, "sidecar_webhook_dead_letters_total") >= 1)
        await until(
            lambda: metric(sidecar, "sidecar_webhook_attempts_total", **DELIVERED_USER) >= 1
        )

        admin = sidecar.app[ADMIN_URL].removeprefix("http://")
        prometheus = await start_prometheus(admin)

        async def scraped_twice() -> bool:
            # Two scrapes at least, so rates over a window have two samples.
            value = await prometheus.value('count_over_time(up{job="sidecar"}[1m])')
            return value is not None and value >= 2 and await prometheus.value("up") == 1

        await prometheus.until(scraped_twice, "two successful scrapes of the sidecar")

        # 2. Every metric named by the dashboard (panels and variables) and the rules exists.
        names = set(await prometheus.api("label/__name__/values"))
        dashboard = load_dashboard()
        wanted: dict[str, set[str]] = {}
        for title, expr in dashboard_queries(dashboard):
            wanted.setdefault(f"panel {title!r}", set()).update(metric_names(expr))
        for variable, query in variable_queries(dashboard):
            wanted[f"variable ${variable}"] = variable_query_names(query)
        for rule in rules(load_rules()):
            wanted[f"rule {rule['alert']}"] = metric_names(rule["expr"])
        missing = {where: sorted(n - names) for where, n in wanted.items() if n - names}
        assert not missing, f"not scraped from the sidecar: {missing}"
        assert len(set().union(*wanted.values())) >= 15  # the extractor found them all

        # 3. Every dashboard query runs and shows something; every rule expression runs.
        empty = []
        for title, expr in dashboard_queries(dashboard):
            if not await prometheus.query(grafana_to_promql(expr)):
                empty.append(title)
        assert not empty, f"panels without data after every kind of call: {empty}"
        for rule in rules(load_rules()):
            await prometheus.query(rule["expr"])  # fails on any error Prometheus reports

        # 4. Trouble, after Prometheus has seen the calm: calls fall back and are shed, a
        #    webhook receiver keeps failing. The alerts about them go pending, no other does.
        for _ in range(2):
            await traffic.post("/api/slow", {}, 202)
            await traffic.post("/api/shed", {}, 202)
        await traffic.post("/api/users", {"username": "again"}, 200)
        await until(lambda: metric(sidecar, "sidecar_webhook_dead_letters_total") >= 2)

        expected = {
            ("SidecarSyncRatioLow", "slow"),  # every call ran out of budget
            ("SidecarSyncRatioLow", "shed"),  # every call was shed
            ("SidecarLoadShedding", "shed"),
            ("SidecarWebhookDeadLetters", ""),
            # Of each completion's three attempts (good: delivered; bad: retry, dead) two fail.
            ("SidecarWebhookFailing", ""),
        }

        async def alerting() -> bool:
            return await prometheus.active_alerts() >= expected

        await prometheus.until(alerting, f"the alerts {sorted(expected)}")
        # The healthy routes, Redis, the stream reader and the webhook queue raise nothing.
        assert await prometheus.active_alerts() == expected

        async def evaluated() -> bool:
            groups = (await prometheus.api("rules"))["groups"]
            found = [r for g in groups for r in g["rules"]]
            assert len(found) == len(rules(load_rules()))
            assert all(r["health"] != "err" for r in found), found
            return all(r["health"] == "ok" for r in found)

        await prometheus.until(evaluated, "every rule evaluated without error")

        # 5. Redis goes away: the Redis alert goes pending.
        own_redis.stop()
        await until(lambda: metric(sidecar, "sidecar_redis_up") == 0)

        async def redis_alert() -> bool:
            return ("SidecarRedisDown", "") in await prometheus.active_alerts()

        await prometheus.until(redis_alert, "SidecarRedisDown once Redis stopped")
    finally:
        await redis.aclose()
