"""nginx for the proxy benchmark: the fast upstream, the 1-worker reverse proxy anchor, and the
front `sidecar export nginx` writes.

Each instance runs from its own config in a temporary directory (`daemon off`, `master_process
off`: one process that is the worker), on a port of 127.0.0.1; nothing of the system's nginx
configuration or service is used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# The upstream's pass-through answer: 50 bytes of JSON.
BODY_50 = '{"id":"bench-0001","status":"done","value":123456}'
assert len(BODY_50) == 50

_COMMON = """
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
{body}
}}
"""

_UPSTREAM = """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    # A command: 202 + Location, the correlation id the proxy sent.
    location = /jobs {{
      add_header Location /jobs/$http_x_correlation_id always;
      return 202 '{{"state":"accepted"}}';
    }}
    location / {{ return 200 '{body}'; }}
  }}
"""

_PROXY = """
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 1000; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"""


def binary() -> str | None:
    """The nginx binary, or None when nginx is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def write_config(
    directory: Path,
    *,
    port: int,
    upstream: int | None = None,
    nofile: int = 20000,
    answer: str = BODY_50,
) -> Path:
    """An nginx.conf in `directory`: the upstream (a GET answered 200 with `answer`, a JSON
    without `'`) when `upstream` is None, else a proxy to it."""
    directory.mkdir(parents=True, exist_ok=True)
    if upstream is None:
        body = _UPSTREAM.format(port=port, body=answer)
    else:
        body = _PROXY.format(port=port, upstream=upstream)
    text = _COMMON.format(
        dir=directory, nofile=nofile, connections=max(1024, nofile - 100), body=body
    )
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def write_front(directory: Path, include: str, *, nofile: int = 20000) -> Path:
    """An nginx.conf in `directory` whose `http` block is `include` (what `sidecar export
    nginx` writes), saved beside it as front.conf."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "front.conf").write_text(include)
    text = _COMMON.format(
        dir=directory,
        nofile=nofile,
        connections=max(1024, nofile - 100),
        body=f"  include {directory / 'front.conf'};",
    )
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def command(config: Path) -> list[str]:
    """The command running nginx in the foreground with `config` (and no other file)."""
    nginx = binary()
    assert nginx is not None
    return [
        nginx,
        "-p",
        str(config.parent),
        "-e",
        str(config.parent / "error.log"),
        "-c",
        str(config),
    ]
