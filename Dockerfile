# syntax=docker/dockerfile:1
# The synchronising sidecar as a container image.
#
#   docker build -t sidecar .
#   docker run --rm -p 8080:8080 -p 9000:9000 \
#       -v "$PWD/my-sidecar.yaml:/etc/sidecar/sidecar.yaml:ro" \
#       -e SIDECAR_ADMIN_TOKEN=... sidecar
#
# Config: mount your file at /etc/sidecar/sidecar.yaml (read-only is fine); no config is baked in,
# so a missing mount fails at once with "cannot read the file". Start from config/sidecar.yaml.
# `SIDECAR_*` environment variables override the file (e.g. SIDECAR_UPSTREAM, SIDECAR_REDIS_URL,
# SIDECAR_ADMIN_TOKEN), and `${VAR:-default}` in the file is filled from the environment.
# Validate a file without serving:
#   docker run --rm -v "$PWD/my-sidecar.yaml:/etc/sidecar/sidecar.yaml:ro" \
#       --entrypoint sidecar sidecar check -c /etc/sidecar/sidecar.yaml
#
# Listeners: inside a container 127.0.0.1 is the container's own loopback. `listen` must be
# 0.0.0.0:8080 for clients to reach the proxy. `admin_listen` may stay 127.0.0.1:9000 (the
# HEALTHCHECK below runs inside the container, so it still works) but then Prometheus and the admin
# portal cannot reach it: use 0.0.0.0:9000 to publish it, on a network only operators reach.
# With any other admin port, set HEALTHCHECK_URL (e.g. http://127.0.0.1:9100/healthz).
#
# Stopping: SIGTERM drains in-flight calls for up to `shutdown_grace` (default 30s), while
# `docker stop` kills after 10s: give it `--stop-timeout 35` (compose: stop_grace_period: 35s),
# or lower shutdown_grace.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HEALTHCHECK_URL=http://127.0.0.1:9000/healthz

# A system user with no shell and no home: the sidecar needs no file system of its own.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
    && mkdir -p /etc/sidecar

# Only what the package build needs (see .dockerignore); the sources go once installed.
COPY pyproject.toml README.md /tmp/src/
COPY sidecar /tmp/src/sidecar
# [all]: every broker's client library (Kafka, RabbitMQ, NATS), so any `sources:` kind runs.
RUN pip install '/tmp/src[all]' && rm -rf /tmp/src

USER sidecar
WORKDIR /tmp

# 8080: the proxy listener; 9000: the admin listener (/healthz, /readyz, /metrics, /admin/).
EXPOSE 8080 9000

# /healthz says the process is up (not /readyz: a Redis blip must not get the container killed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]

ENTRYPOINT ["sidecar", "run"]
CMD ["-c", "/etc/sidecar/sidecar.yaml"]
