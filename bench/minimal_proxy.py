"""The minimal aiohttp reverse proxy the sidecar's pass-through is compared with (one process).

One ClientSession (DummyCookieJar, no timeouts, no decompression), hop-by-hop headers dropped,
bodies streamed both ways. Run: `python -m bench.minimal_proxy --port P --upstream URL`.
"""

import argparse

from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
HOP |= {"upgrade", "host", "proxy-authenticate", "proxy-authorization"}
SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = request.content if request.body_exists else None
    url = request.app[UPSTREAM] + request.raw_path
    async with request.app[SESSION].request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as up:
        out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
        response = web.StreamResponse(status=up.status, reason=up.reason, headers=out)
        await response.prepare(request)
        async for chunk in up.content.iter_chunked(65536):
            await response.write(chunk)
        await response.write_eof()
        return response


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = ClientSession(
        connector=TCPConnector(limit=1000, limit_per_host=0),
        cookie_jar=DummyCookieJar(),
        timeout=ClientTimeout(),  # no timers at all
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )
    yield
    await app[SESSION].close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=4096)
