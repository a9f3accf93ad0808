"""`make demo`: the users example behind the sidecar, and what a client sees.

Starts (on free ports) Redis if none answers, the legacy users API (examples/users/api.py) and the
sidecar (examples/users/sidecar.yaml, ports and URLs overridden with `SIDECAR_*` variables), waits
until both are ready, then makes a few calls and prints the answers:

    (a) a normal create through the sidecar        → 200 with the user (synchronous)
    (b) a refused create through the sidecar       → 500 problem+json with the reason
    (c) a slow create (4 s, budget 2 s)            → 202 + Location, then polled until 200
    (d) a normal create straight to the API        → 202 + Location (what clients had before)
    (e) `Prefer: respond-async` through the sidecar → 202 at once
    (f) webhooks: a client subscribes through the admin API (with its credential header), the
        example receiver (examples/webhook_receiver.py) is started with the returned secret, the
        client makes a `respond-async` create with that credential → 202 at once, and the signed
        `user.created` webhook arrives at the receiver (its output line is shown); then the
        subscription's attempts log with the delivered attempt. The subscription is deleted after.

and a few lines of the sidecar's metrics. Whatever the answers are, it prints them: a sidecar
without its synchronous wait simply shows 202s. Everything started is stopped on exit, Ctrl-C
included. The processes' logs go to files in a temporary directory, named at the end.

`--sections cf` runs only those sections (default: all; the tests run `f` alone). `--portal`
keeps everything running afterwards (and section f's subscription, with its delivery) so that the
client portal at the admin listener's /admin/ shows it: sign in with the demo client's credential;
Ctrl-C stops everything.

Exit status: 0 when the calls were made; 1 when something did not start or died on the way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import redis

from devtools.redis_server import RedisServer, RedisUnavailable, answers, free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "users" / "sidecar.yaml"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SHOWN_HEADERS = (
    "Location",
    "Retry-After",
    "Content-Location",
    "Content-Type",
    "X-Correlation-ID",
    "Preference-Applied",
)
READY_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 15.0
POLL_DEADLINE_S = 15.0
WEBHOOK_DEADLINE_S = 15.0  # the first attempt is made at once; its first retry would be after 5s
LOG_TAIL_LINES = 20
SECTIONS = "abcdef"
# (f): the client's credential (tenancy.credential_header is Authorization) and a description that
# marks the demo's subscriptions, so one left behind by an interrupted run is deleted by the next.
CLIENT_CREDENTIAL = "Bearer demo-client-key"
SUBSCRIPTION_DESCRIPTION = "make demo (deleted when the demo ends)"


class DemoFailed(Exception):
    """Something the demo needs did not start or died; the message says what and shows its log."""


@dataclass
class Child:
    """A subprocess of the demo, its log file and how to stop it."""

    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], env: Mapping[str, str]) -> None:
        """Start it in its own session (Ctrl-C reaches the demo only, which stops it in order)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> list[str]:
        """Its output so far, line by line."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of its output."""
        return "\n".join(self.output()[-lines:]) or "(no output)"

    def died(self, what: str) -> DemoFailed:
        """The error to raise when it is gone or unusable, with the tail of its output."""
        code = self.proc.returncode if self.proc is not None else None
        status = f" (exit status {code})" if code is not None else ""
        tail = "\n".join(f"    | {line}" for line in self.tail().splitlines())
        return DemoFailed(f"{self.name} {what}{status}; the end of its output:\n{tail}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Answer:
    """What a client saw for one call."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: str
    elapsed_ms: float
    json: Any = field(default=None)


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def heading(title: str) -> None:
    """A section title."""
    print()
    print(f"== {title} " + "=" * max(3, 76 - len(title)))


def note(text: str) -> None:
    """An explanation under a call."""
    print(f"   {text}")


def show_request(method: str, url: str, body: Any = None, headers: Mapping[str, str] = {}) -> None:
    """The call as the client makes it."""
    extra = f"  {json.dumps(body)}" if body is not None else ""
    print(f"   {method} {url}{extra}")
    for name, value in headers.items():
        print(f"     {name}: {value}")


def show_answer(answer: Answer) -> None:
    """Status line, the headers that matter, the body and the time taken."""
    print(f"   -> {answer.status} {answer.reason}   ({answer.elapsed_ms:.0f} ms)")
    for name in SHOWN_HEADERS:
        if name in answer.headers:
            print(f"     {name}: {answer.headers[name]}")
    body = answer.body if len(answer.body) <= 400 else answer.body[:400] + "..."
    if body:
        print(f"     {body}")


# --------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> Answer:
    """Make one call, print it (unless `quiet`) and return what came back."""
    headers = dict(headers or {})
    if not quiet:
        show_request(method, url, body, headers)
    started = time.perf_counter()
    async with session.request(method, url, json=body, headers=headers) as resp:
        raw = await resp.read()
    elapsed_ms = (time.perf_counter() - started) * 1000
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    answer = Answer(
        resp.status,
        resp.reason or "",
        dict(resp.headers),
        json.dumps(parsed) if parsed is not None else text,
        elapsed_ms,
        parsed,
    )
    if not quiet:
        show_answer(answer)
    return answer


async def wait_ready(session: aiohttp.ClientSession, url: str, child: Child) -> None:
    """Poll `url` until it answers 200, or raise `DemoFailed` when `child` dies or is too slow."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.died("exited while starting")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                if resp.status == 200:
                    return
                last = f"{resp.status} {await resp.text()}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            last = exc.__class__.__name__
        await asyncio.sleep(0.1)
    raise child.died(f"was not ready after {READY_TIMEOUT_S:.0f}s ({url}: {last})")


async def poll_location(session: aiohttp.ClientSession, url: str) -> Answer | None:
    """GET `url` until it is no longer pending (404/202), as a client following Location does."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    polls = 0
    while time.monotonic() < deadline:
        answer = await call(session, "GET", url, quiet=True)
        polls += 1
        if answer.status not in (202, 404):
            note(f"GET {url}  (poll #{polls})")
            show_answer(answer)
            return answer
        note(f"GET {url}  -> {answer.status} {answer.body}  (poll #{polls})")
        try:
            pause_s = min(float(answer.headers.get("Retry-After", "1")), 1.0)
        except ValueError:
            pause_s = 1.0
        await asyncio.sleep(pause_s)
    note(f"still pending after {POLL_DEADLINE_S:.0f}s; giving up")
    return None


def explain(answer: Answer, expected: int, meaning: str) -> None:
    """Say whether the answer is the synchronous one and, if not, why it may be so."""
    if answer.status == expected:
        note(f"OK: {meaning}")
    elif answer.status == 202:
        note(
            f"got 202 instead of {expected}: the sidecar fell back to the API's own answer "
            "(budget spent, or no synchronous wait in this build)"
        )
    else:
        note(f"unexpected: {answer.status} (expected {expected})")


@dataclass
class Demo:
    """Where everything listens, and the processes (the receiver is started by section f)."""

    sidecar_url: str
    admin_url: str
    api_url: str
    api: Child
    sidecar: Child
    receiver: Child
    receiver_port: int
    env: Mapping[str, str]
    sections: str = SECTIONS
    portal: bool = False  # keep section f's subscription for the portal to show


async def run_calls(demo: Demo) -> None:
    """Wait until everything is ready, then make the calls and print what the client sees."""
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await wait_ready(session, f"{demo.api_url}/healthz", demo.api)
        await wait_ready(session, f"{demo.admin_url}/readyz", demo.sidecar)
        print("   the API and the sidecar are ready")
        try:
            await make_calls(session, demo)
        except (TimeoutError, aiohttp.ClientError) as exc:
            for child in (demo.api, demo.sidecar, demo.receiver):
                if child.proc is not None and not child.alive():
                    raise child.died("died during the demo") from None
            raise DemoFailed(f"a call failed: {exc.__class__.__name__}: {exc}") from None


async def make_calls(session: aiohttp.ClientSession, demo: Demo) -> None:
    """The sections asked for, (a) to (f), then the metrics."""
    sidecar_url, admin_url, api_url = demo.sidecar_url, demo.admin_url, demo.api_url
    if "a" in demo.sections:
        await section_a(session, sidecar_url)
    if "b" in demo.sections:
        await section_b(session, sidecar_url)
    if "c" in demo.sections:
        await section_c(session, sidecar_url)
    if "d" in demo.sections:
        await section_d(session, api_url)
    if "e" in demo.sections:
        await section_e(session, sidecar_url)
    if "f" in demo.sections:
        await section_f(session, demo)
    await show_metrics(session, admin_url)


async def section_a(session: aiohttp.ClientSession, sidecar_url: str) -> None:
    """(a) a normal create through the sidecar: 200 with the user."""
    users = f"{sidecar_url}/api/users"
    heading("(a) a normal create, through the sidecar")
    answer = await call(session, "POST", users, body={"username": "felipe", "age": 100})
    explain(answer, 200, "the client got the created user synchronously")


async def section_b(session: aiohttp.ClientSession, sidecar_url: str) -> None:
    """(b) a refused create: 500 problem+json."""
    users = f"{sidecar_url}/api/users"
    heading("(b) a refused create (username 'fail...'), through the sidecar")
    answer = await call(session, "POST", users, body={"username": "failing-fred", "age": 30})
    explain(answer, 500, "the UserNotCreated event became a problem document with its reason")


async def section_c(session: aiohttp.ClientSession, sidecar_url: str) -> None:
    """(c) a slow create: 202 + Location past the budget, then followed until 200."""
    users = f"{sidecar_url}/api/users"
    heading("(c) a slow create (the API takes 4s, the budget is 2s), through the sidecar")
    correlation_id = f"demo-{uuid.uuid4().hex[:12]}"
    answer = await call(
        session,
        "POST",
        users,
        body={"username": "slow-sam", "age": 42},
        headers={"X-Correlation-ID": correlation_id},
    )
    if answer.status == 202 and "Location" in answer.headers:
        note("OK: past the budget the client gets 202 + Location and follows it:")
        await poll_location(session, urljoin(sidecar_url + "/", answer.headers["Location"]))
    else:
        explain(answer, 202, "")


async def section_d(session: aiohttp.ClientSession, api_url: str) -> None:
    """(d) the same kind of create straight to the API: 202 + Location."""
    heading("(d) the same kind of create, straight to the API (what clients had before)")
    answer = await call(session, "POST", f"{api_url}/api/users", body={"username": "ana", "age": 7})
    explain(answer, 202, "the legacy API always answers 202; the client must poll the Location")


async def section_e(session: aiohttp.ClientSession, sidecar_url: str) -> None:
    """(e) `Prefer: respond-async`: the 202 at once."""
    users = f"{sidecar_url}/api/users"
    heading("(e) Prefer: respond-async, through the sidecar")
    answer = await call(
        session,
        "POST",
        users,
        body={"username": "bea", "age": 33},
        headers={"Prefer": "respond-async"},
    )
    explain(answer, 202, "the client asked not to wait, and got the 202 at once")


async def section_f(session: aiohttp.ClientSession, demo: Demo) -> None:
    """(f) subscribe as a client, start the receiver with the secret, make a respond-async call
    with the same credential, and show the signed webhook arriving and the attempts log."""
    heading("(f) webhooks: a client subscribes, calls, and its receiver gets the signed event")
    client = {"Authorization": CLIENT_CREDENTIAL}
    subscriptions = f"{demo.admin_url}/admin/api/subscriptions"
    await delete_leftovers(session, subscriptions, client)

    note("1. the client subscribes on the admin API, with the credential it calls the API with:")
    receiver_url = f"http://127.0.0.1:{demo.receiver_port}"
    body = {
        "url": f"{receiver_url}/hooks",
        "events": ["user.created", "user.creation_failed"],
        "description": SUBSCRIPTION_DESCRIPTION,
    }
    show_request("POST", subscriptions, body, client)
    answer = await call(session, "POST", subscriptions, body=body, headers=client, quiet=True)
    secret = answer.json.get("secret") if isinstance(answer.json, dict) else None
    sub_id = answer.json.get("id") if isinstance(answer.json, dict) else None
    if answer.status != 201 or not isinstance(secret, str) or not isinstance(sub_id, str):
        show_answer(answer)
        note(f"unexpected: {answer.status} (expected 201 with the subscription and its secret)")
        return
    # The secret is shown this once; the demo shortens it on screen (the receiver gets it whole).
    show_answer(dataclasses.replace(answer, body=answer.body.replace(secret, secret[:12] + "...")))
    try:
        await deliver_one(session, demo, client, f"{subscriptions}/{sub_id}", secret)
    finally:
        if demo.portal:
            note("(the demo's subscription stays while the portal is open)")
        else:
            async with session.delete(f"{subscriptions}/{sub_id}", headers=client) as resp:
                note(f"(the demo's subscription is deleted again: DELETE -> {resp.status})")


async def delete_leftovers(
    session: aiohttp.ClientSession, subscriptions: str, client: Mapping[str, str]
) -> None:
    """Delete the subscriptions an interrupted earlier demo left behind (their receiver is gone)."""
    answer = await call(session, "GET", subscriptions, headers=client, quiet=True)
    listed = answer.json.get("subscriptions", []) if isinstance(answer.json, dict) else []
    for sub in listed:
        if sub.get("description") == SUBSCRIPTION_DESCRIPTION:
            await call(
                session, "DELETE", f"{subscriptions}/{sub['id']}", headers=client, quiet=True
            )


async def deliver_one(
    session: aiohttp.ClientSession,
    demo: Demo,
    client: Mapping[str, str],
    subscription: str,
    secret: str,
) -> None:
    """Steps 2 to 4 of (f): the receiver, the call, the webhook, the attempts log."""
    receiver = demo.receiver
    receiver_url = f"http://127.0.0.1:{demo.receiver_port}"
    note(f"2. the client's receiver starts with that secret: {receiver_url}")
    note("   (python -m examples.webhook_receiver: verifies the signature, deduplicates, prints)")
    receiver.start(
        [sys.executable, "-m", "examples.webhook_receiver", "--port", str(demo.receiver_port)],
        {**demo.env, "WEBHOOK_SECRET": secret},  # in the environment: not shown by `ps`
    )
    await wait_ready(session, f"{receiver_url}/healthz", receiver)

    note("3. the client makes a call through the sidecar with the same credential, not waiting:")
    correlation_id = f"demo-{uuid.uuid4().hex[:12]}"
    answer = await call(
        session,
        "POST",
        f"{demo.sidecar_url}/api/users",
        body={"username": "webhook-wendy", "age": 28},
        headers={**client, "Prefer": "respond-async", "X-Correlation-ID": correlation_id},
    )
    explain(answer, 202, "the 202 at once; the completion will be pushed to the subscription")
    answered = time.monotonic()

    note(f"4. the receiver's output for it (waiting for it, at most {WEBHOOK_DEADLINE_S:.0f}s):")
    lines = await receiver_lines(receiver, correlation_id, WEBHOOK_DEADLINE_S)
    for line in lines:
        print(f"   receiver | {line}")
    if lines:
        waited_ms = (time.monotonic() - answered) * 1000
        note(f"OK: the signed webhook arrived and verified, {waited_ms:.0f} ms after the 202")
    else:
        note(
            f"no webhook within {WEBHOOK_DEADLINE_S:.0f}s; the receiver's log: {receiver.log_path}"
        )

    note("5. the subscription's attempts log, as the client sees it:")
    attempts_url = f"{subscription}/attempts"
    answer = await delivered_attempts(session, attempts_url, client)
    show_request("GET", attempts_url, headers=client)
    show_answer(dataclasses.replace(answer, body=""))
    listed = answer.json.get("attempts", []) if isinstance(answer.json, dict) else []
    for attempt in listed:
        print(f"     {json.dumps(attempt)}")
    delivered = [a for a in listed if a.get("result") == "delivered"]
    if delivered:
        status = delivered[0].get("response_status")
        note(
            f"OK: attempt {delivered[0].get('attempt')} delivered (the receiver answered {status})"
        )
    else:
        note(f"no delivered attempt within {WEBHOOK_DEADLINE_S:.0f}s")


async def receiver_lines(child: Child, needle: str, deadline_s: float) -> list[str]:
    """The receiver's output lines containing `needle`, once there is one; [] after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        lines = [line for line in child.output() if needle in line]
        if lines:
            return lines
        if not child.alive():
            raise child.died("exited while waiting for the webhook")
        if time.monotonic() >= deadline:
            return []
        await asyncio.sleep(0.05)


async def delivered_attempts(
    session: aiohttp.ClientSession, url: str, client: Mapping[str, str]
) -> Answer:
    """GET the attempts log until it has a delivered attempt (the receiver prints its line as it
    answers, a moment before the sidecar logs the attempt), or the deadline passes."""
    deadline = time.monotonic() + WEBHOOK_DEADLINE_S
    while True:
        answer = await call(session, "GET", url, headers=client, quiet=True)
        listed = answer.json.get("attempts", []) if isinstance(answer.json, dict) else []
        delivered = any(a.get("result") == "delivered" for a in listed)
        if delivered or answer.status != 200 or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(0.05)


async def show_metrics(session: aiohttp.ClientSession, admin_url: str) -> None:
    """A few lines of the sidecar's metrics."""
    heading("the sidecar's metrics (GET /metrics on the admin listener)")
    async with session.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    shown = ("sidecar_requests_total", "sidecar_fallbacks_total", "sidecar_webhook_attempts_total")
    lines = [line for line in text.splitlines() if line.startswith(shown)]
    for line in lines or ["(no sidecar_requests_total lines)"]:
        print(f"   {line}")


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def wait_in_portal(admin_url: str, sidecar: Child) -> None:
    """Say where the portal is and how to sign in; wait until Ctrl-C (or the sidecar exits)."""
    heading("the client portal")
    print(f"   open {admin_url}/admin/ and sign in with the Credential {CLIENT_CREDENTIAL}")
    print("   (the demo client's endpoint and its delivery are there; Ctrl-C stops everything)")
    try:
        while sidecar.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    raise sidecar.died("exited while the portal was open")


def forget(redis_url: str, prefix: str) -> None:
    """Delete every key of this demo run from a Redis that outlives it."""
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()
    except redis.RedisError as exc:
        print(f"   could not delete the demo's keys ({prefix}:*): {exc}", file=sys.stderr)


def pick_redis() -> tuple[str, RedisServer | None]:
    """$REDIS_URL (or the default) when it answers, else a throwaway redis-server."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if answers(url):
        return url, None
    server = RedisServer().start()
    return server.url, server


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: which sections to run."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.users.demo",
        description="The users example behind the sidecar, and what a client sees.",
    )
    parser.add_argument(
        "--sections",
        default=SECTIONS,
        help=f"the sections to run, e.g. 'af' (default: all, {SECTIONS!r})",
    )
    parser.add_argument(
        "--portal",
        action="store_true",
        help="keep everything running afterwards for the portal at /admin/ (Ctrl-C stops)",
    )
    args = parser.parse_args(argv)
    if not args.sections or set(args.sections) - set(SECTIONS):
        parser.error(f"--sections: give letters among {SECTIONS!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the exit status says whether it could."""
    args = parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    api = Child("the users API", logs / "api.log")
    sidecar = Child("the sidecar", logs / "sidecar.log")
    receiver = Child("the webhook receiver", logs / "receiver.log")
    redis_server: RedisServer | None = None
    prefix = f"demo-{secrets.token_hex(4)}"
    redis_url: str | None = None
    redis_server: RedisServer | None = None
    try:
        heading("starting")
        try:
            redis_url, redis_server = pick_redis()
        except RedisUnavailable as exc:
            raise DemoFailed(str(exc)) from None
        origin = "a throwaway redis-server" if redis_server else "already running"
        api_port, port, admin_port = free_port(), free_port(), free_port()
        receiver_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        sidecar_url = f"http://127.0.0.1:{port}"
        admin_url = f"http://127.0.0.1:{admin_port}"
        print(f"   Redis        {redis_url} ({origin})")
        print(f"   users API    {api_url}  (python -m examples.users.api)")
        print(f"   sidecar      {sidecar_url}, admin {admin_url}  ({CONFIG.relative_to(REPO)})")
        if "f" in args.sections:
            print(f"   receiver     http://127.0.0.1:{receiver_port}  (started by section f)")
        # Every key and stream of this run under a prefix of its own, deleted at the end: the
        # demo shares a Redis with anything else on it (another demo run, a test, an app) and
        # leaves nothing behind.
        print(f"   Redis keys   {prefix}:*  (deleted when the demo ends)")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "USERS_EVENTS_STREAM": f"{prefix}:users.events",
        }
        api.start(
            [
                sys.executable,
                "-m",
                "examples.users.api",
                "--port",
                str(api_port),
                "--redis-url",
                redis_url,
                "--slow-delay",
                "4",
                "--prefix",
                f"{prefix}:api",
                "--commands-stream",
                f"{prefix}:users.commands",
                "--events-stream",
                f"{prefix}:users.events",
            ],
            env,
        )
        sidecar.start(
            [sys.executable, "-m", "sidecar.cli", "run", "-c", str(CONFIG)],
            {
                **env,
                "SIDECAR_LISTEN": f"127.0.0.1:{port}",
                "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                "SIDECAR_UPSTREAM": api_url,
                "SIDECAR_REDIS_URL": redis_url,
                "SIDECAR_KEY_PREFIX": f"{prefix}:sidecar",
                "SIDECAR_SHUTDOWN_GRACE": "2s",
                # (f) delivers to a receiver on 127.0.0.1, which the webhook target policy refuses
                # by default (SSRF). Allowed here for this local demo only, by an override rather
                # than in sidecar.yaml, so that the example file stays production-shaped.
                "SIDECAR_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
            },
        )
        demo = Demo(
            sidecar_url,
            admin_url,
            api_url,
            api,
            sidecar,
            receiver,
            receiver_port,
            env,
            args.sections,
            args.portal,
        )
        asyncio.run(run_calls(demo))
        if args.portal:
            wait_in_portal(admin_url, sidecar)
    except DemoFailed as exc:
        sys.stdout.flush()
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not leave processes behind: stopping takes a few seconds at most.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The sidecar first (it holds clients and delivers webhooks), then the receiver, then the
        # API, then Redis if it is ours.
        sidecar.stop()
        receiver.stop()
        api.stop()
        if redis_server is not None:
            redis_server.close()
        elif redis_url is not None:
            forget(redis_url, prefix)
        print(f"\n   stopped everything; the logs are in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
