"""What the pieces of one proxied request cost in isolation (run:
`.venv/bin/python -m bench.micro_costs`).

A sampling profiler attributes time to functions but can over-weight some (py-spy stops the
process for each sample); this times the sidecar's own per-request steps one by one, with
the inputs a pass-through request of the proxy benchmark has (wrk's headers, nginx's answer), so
the profile's shares can be checked against µs. Pure CPU, one process, no I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sidecar.config import parse_settings
from sidecar.http.headers import (
    client_origin,
    correlation_id,
    end_to_end,
    response_headers,
    upstream_request_headers,
)
from sidecar.metrics import Metrics, status_class
from sidecar.routing import RouteTable

CLIENT = CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1:8080"}))  # what wrk sends
UPSTREAM = CIMultiDictProxy(
    CIMultiDict(
        {
            "Server": "nginx/1.22.1",
            "Date": "Wed, 02 Dec 2026 18:38:15 GMT",
            "Content-Type": "application/json",
            "Content-Length": "50",
            "Connection": "keep-alive",
        }
    )
)
UPSTREAM_URL = URL("http://127.0.0.1:8000")


def per_call_us(fn: Callable[[], object], n: int = 20_000) -> float:
    """Best of 5 rounds of `n` calls, in µs per call."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    """Print one line per step."""
    settings = parse_settings(
        {
            "routes": [
                {"name": "r", "method": "POST", "path": "/jobs", "wait": {"poll": {}}},
            ]
        },
        env={},
    )
    table = RouteTable(settings)
    metrics = Metrics()
    access = logging.getLogger("sidecar.access")
    logging.getLogger().setLevel(logging.WARNING)

    def record() -> None:  # what proxy._record does for a pass-through
        metrics.requests.labels("-", "passthrough", status_class(200)).inc()
        metrics.request_duration.labels("-", "passthrough").observe(0.0012)
        access.info(
            "call",
            extra={
                "route": "-",
                "method": "GET",
                "path": "/pass",
                "status": 200,
                "outcome": "passthrough",
                "reason": None,
                "correlation_id": "x",
                "duration_ms": round(1.2345, 3),
                "upstream_ms": round(1.0, 3),
                "wait_ms": None,
            },
        )

    loop = asyncio.new_event_loop()

    def in_flight() -> None:
        metrics.in_flight.inc()
        metrics.in_flight.dec()

    def timer() -> None:  # one TimerHandle scheduled and cancelled (aiohttp's sock_read)
        loop.call_at(loop.time() + 60, lambda: None).cancel()

    steps: list[tuple[str, Callable[[], object]]] = [
        ("headers.correlation_id(None) (uuid4)", lambda: correlation_id(None)),
        ("headers.correlation_id(valid id)", lambda: correlation_id("abc-123")),
        (
            "headers.upstream_request_headers",
            lambda: upstream_request_headers(
                CLIENT,
                remote="127.0.0.1",
                scheme="http",
                host="127.0.0.1:8080",
                trust_forwarded=False,
                correlation_header="X-Correlation-ID",
                correlation="abc",
            ),
        ),
        (
            "headers.response_headers",
            lambda: response_headers(UPSTREAM, upstream=UPSTREAM_URL, origin="http://x"),
        ),
        ("headers.end_to_end (the answer's 5 headers)", lambda: end_to_end(UPSTREAM)),
        (
            "headers.client_origin",
            lambda: client_origin(
                public_url=None, scheme="http", host="127.0.0.1:8080", forwarded=None
            ),
        ),
        ("routing.RouteTable.match (1 route, no match)", lambda: table.match("GET", "/pass")),
        ("proxy.upstream_url", lambda: URL(str(UPSTREAM_URL).rstrip("/") + "/pass", encoded=True)),
        ("metrics in_flight inc + dec", in_flight),
        ("proxy._record (2 labels() + inc/observe + a disabled log call)", record),
        ("loop.call_at + cancel (a timer)", timer),
    ]
    print("| step | µs per call |\n|---|---:|")
    for name, fn in steps:
        print(f"| {name} | {per_call_us(fn):.2f} |")
    loop.close()


if __name__ == "__main__":
    main()
