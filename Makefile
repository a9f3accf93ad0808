# Every target CI runs lives here; .ci/run calls these.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/sidecar.yaml
# What the machine needs beyond the .venv (Debian's packages, installed when missing; quick when
# all is there): --base for the .venv, --test for `make test`, --lint for Biome's node.
DEPS := PYTHON=$(PYTHON) scripts/test-deps
# Biome (package.json, pinned by package-lock.json) formats and lints the portal's JS and CSS;
# it colours even a pipe, so colours only on a terminal (CI logs stay plain).
BIOME := node_modules/.bin/biome
BIOME_COLORS := $$(test -t 2 || echo --colors=off)

.PHONY: install test lint format demo run check schema bench bench-proxy bench-profile bench-clients clean

$(BIN)/sidecar: pyproject.toml
	$(DEPS) --base
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(BIN)/sidecar

install: $(BIN)/sidecar

# node_modules/ when missing or older than package-lock.json (npm writes its own copy of the lock
# file there).
node_modules/.package-lock.json: package-lock.json
	$(DEPS) --lint
	npm ci --no-audit --no-fund
	@touch $@

# The suite runs in PYTEST_WORKERS processes (pytest-xdist; most tests wait on sockets, so more
# workers than cores pay off); PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 3

test: install
	$(DEPS) --test
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: install node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIOME) ci --error-on-warnings $(BIOME_COLORS)

format: install node_modules/.package-lock.json
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIOME) check --write $(BIOME_COLORS)

demo: install
	$(BIN)/python -m examples.users.demo

run: install
	$(BIN)/sidecar run -c $(CONFIG)

# Every shipped sidecar config: config/*.yaml, examples/*/sidecar.yaml and the compose example's
# Kafka variant, examples/compose/kafka/sidecar.yaml (other YAML under
# examples/ is Kubernetes, compose or Prometheus; tests/ops/ checks the config embedded there).
check: install
	@for f in config/*.yaml examples/*/sidecar.yaml examples/*/*/sidecar.yaml; do echo "== $$f"; $(BIN)/sidecar check -c $$f || exit 1; done

schema: install
	$(BIN)/sidecar schema > config/sidecar.schema.json

# Benchmarks (docs/benchmarks.md), all on 127.0.0.1: the synchronised call (sync_bench) and
# webhook delivery (webhook_bench), about a minute each; fails if either does. By hand: the
# large-body RSS bench streams 3 GiB (python -m bench.upload_rss), instructions per call under
# valgrind (python -m bench.call_instructions [--other PATH]), each request step timed alone
# (python -m bench.micro_costs).
bench: install
	$(BIN)/python -m bench.sync_bench
	$(BIN)/python -m bench.webhook_bench
	$(BIN)/python -m bench.source_bench

# The proxy benchmark (docs/benchmarks.md): pass-through against a minimal aiohttp proxy and nginx,
# synchronised intake, held calls, event->answer; 3 runs (~10 min), figures against the targets,
# docs/bench/proxy-latest.json/.png. Uses wrk and nginx when installed (apt-get install nginx wrk).
# BENCH_ARGS="--label before" names the output; "--quick" is a 1-minute smoke run.
bench-proxy: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.proxy_bench $(BENCH_ARGS)

# py-spy flame graphs of the pass-through and of the synchronised intake, in docs/bench/profiles/;
# BENCH_ARGS=--native adds C frames.
bench-profile: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.proxy_bench --profile $(BENCH_ARGS)

# The upstream clients alone, side by side: the sidecar's pool against an aiohttp ClientSession,
# 20,000 GETs of a 204-byte JSON from nginx, 3 interleaved rounds each, GETs/s and CPU per GET,
# and instructions per GET under valgrind when installed (~1 min); docs/bench/upstream-clients.json.
# BENCH_ARGS="--quick" is a smoke run.
bench-clients: install
	$(BIN)/python -m bench.upstream_clients --instructions $(BENCH_ARGS)

# What invented tenants and slow clients cost a real one (docs/benchmarks.md): a real tenant's
# webhook delay behind 400 invented tarpit tenants, Redis bytes after a test-data flood, RSS,
# pass-through latency and the operator's pages with 30,000 subscriptions; each side on its own
# throwaway redis-server and sidecar (~20 min); docs/bench/trust-rows.json and .md.
# BENCH_ARGS="--other PATH" measures another checkout (with its own .venv) beside this one;
# "--quick" is a 1-minute smoke run; "--rows 1" runs one row.
.PHONY: bench-trust
bench-trust: install
	$(BIN)/python -m bench.trust $(BENCH_ARGS)

# The soak (docs/soak.md): 3 replicas sharing a Redis with AOF, the users example API, 50 calls/s
# with 5x bursts, a receiver that verifies every signature and fails 3 % and hangs 1 % of
# deliveries, and faults on a schedule (replica SIGKILL and SIGSTOP, Redis SIGTERM and SIGKILL);
# about 10 minutes; prints the ledger and writes docs/soak/soak.json and .md; fails when a delivery
# is missing. SOAK_ARGS="--minutes 2" is shorter; "--sentinel" runs a Sentinel set with
# failovers; "--other PATH" runs the replicas of another checkout (its own .venv).
.PHONY: soak
soak: install
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache node_modules
