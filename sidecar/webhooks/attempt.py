"""One delivery attempt: a signed POST through the guarded session, and what to do next.

`post_once` never raises: it returns an `AttemptResult` whose `error` is a class (dns, refused,
connect, tls, timeout, http, internal) for the attempts log. What follows from it is decided in
`retry`. The target URL's query and password (a receiver's `?token=`, say) never reach the
attempts log nor a log line: where an error quotes the URL, it is shown with them masked.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..http.headers import parse_retry_after
from .signing import signature_headers
from .targets import GuardedResolver, TargetPolicy, TargetRefused

logger = logging.getLogger(__name__)

EXCERPT_BYTES = 2048


def shown_url(url: str) -> str:
    """`url` for logs and error details: every query value and the password masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = "&".join(
        f"{name}=***" if eq else name
        for name, eq, _ in (part.partition("=") for part in parts.query.split("&") if part)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _scrubbed(detail: str, url: str) -> str:
    """An error's text without the secrets of `url`, wherever it quotes it."""
    parts = urlsplit(url)
    if not parts.query and "@" not in parts.netloc and not parts.fragment:
        return detail
    detail = detail.replace(url, shown_url(url))
    for secret in (parts.query, parts.fragment, parts.password or ""):
        if secret:
            detail = detail.replace(secret, "***")
    return detail


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt learnt."""

    status: int | None
    duration_s: float
    error: str | None = None  # dns, refused, connect, tls, timeout, http, internal
    detail: str = ""
    excerpt: str = ""
    retry_after_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # the webhook-* headers sent

    @property
    def delivered(self) -> bool:
        """2xx."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        """410: the receiver asks to disable the subscription."""
        return self.status == 410


def create_webhook_session(policy: TargetPolicy, concurrency: int) -> aiohttp.ClientSession:
    """The webhook client: SSRF-guarded resolver, no cookies, no proxies from the environment."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), limit=concurrency)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def post_once(
    session: aiohttp.ClientSession,
    policy: TargetPolicy,
    url: str,
    message_id: str,
    body: bytes,
    secrets_: Sequence[str],
    timeout_s: float,
    trace: Mapping[str, str] | None = None,
) -> AttemptResult:
    """POST the signed body once (freshly timestamped), with the `trace` headers when it has
    any; never follows redirects."""
    started = time.perf_counter()
    signed: dict[str, str] = {}

    def done(
        status: int | None, error: str | None, detail: str = "", **kw: object
    ) -> AttemptResult:
        elapsed = time.perf_counter() - started
        detail = _scrubbed(detail, url)
        return AttemptResult(status, elapsed, error, detail, headers=signed, **kw)  # type: ignore[arg-type]

    try:
        policy.check_url(url)
        signed = signature_headers(secrets_, message_id, body)
        if trace:
            signed.update(trace)  # recorded with the attempt, like the signature
        headers = {**signed, "Content-Type": "application/json"}
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            excerpt = (await response.content.read(EXCERPT_BYTES)).decode("utf-8", "replace")
            status = response.status
            error = None if 200 <= status < 300 else "http"
            return done(
                status,
                error,
                f"HTTP {status}" if error else "",
                excerpt=excerpt,
                retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            )
    except TargetRefused as exc:
        return done(None, "refused", str(exc))
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, TargetRefused):
            return done(None, "refused", str(exc.os_error))
        return done(None, "dns", str(exc))
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        return done(None, "tls", str(exc))
    except aiohttp.ClientConnectorError as exc:
        return done(None, "connect", str(exc))
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return done(None, "timeout", f"no answer within {timeout_s:g}s")
    except aiohttp.ClientError as exc:
        return done(None, "connect", f"{exc.__class__.__name__}: {exc}")
    except (ValueError, TypeError, binascii.Error) as exc:
        # Ours, not the receiver's (e.g. a secret that does not decode): recorded and retried
        # like any failure, so the message is never stuck unacknowledged.
        logger.exception("webhook attempt could not be made", extra={"url": shown_url(url)})
        return done(None, "internal", f"{exc.__class__.__name__}: {exc}")
