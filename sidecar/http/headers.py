"""Header rules of a reverse proxy: hop-by-hop filtering, X-Forwarded-*, Location rewriting,
correlation ids."""

from __future__ import annotations

import email.utils
import functools
import re
import time
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..ids import new_id

# RFC 9110 §7.6.1 plus the legacy ones every proxy drops.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)

# Answered by the sidecar itself, never passed on: an upstream that does not send `100
# Continue` would otherwise hold the call until its read timeout.
NOT_FORWARDED = frozenset({"expect"})

_CORRELATION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def correlation_id(supplied: str | None) -> str:
    """The client's id when it is 1-128 chars of `[A-Za-z0-9._:-]`, else a new UUID."""
    if supplied and _CORRELATION_RE.match(supplied):
        return supplied
    return new_id()


def end_to_end(
    headers: Mapping[str, str] | CIMultiDictProxy[str], also: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, those the `Connection` header names, nor `also`."""
    drop = HOP_BY_HOP | also if also else HOP_BY_HOP
    if "Connection" in headers:
        values = (
            headers.getall("Connection", [])
            if isinstance(headers, CIMultiDictProxy | CIMultiDict)
            else [headers.get("Connection", "")]
        )
        named = {t.strip().lower() for v in values for t in v.split(",") if t.strip()}
        drop = drop | named
    kept: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in drop:
            kept.add(k, v)
    return kept


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str],
    *,
    remote: str | None,
    scheme: str,
    host: str | None,
    trust_forwarded: bool,
    correlation_header: str,
    correlation: str,
    trace: Mapping[str, str] | None = None,
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones, X-Forwarded-*, the correlation id, and the
    call's trace context (in place of the client's)."""
    headers = end_to_end(client_headers, NOT_FORWARDED)
    headers.popall("Host", None)
    if not trust_forwarded:
        for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"):
            headers.popall(name, None)
    prior = headers.get("X-Forwarded-For")
    if remote:
        headers["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
    headers.setdefault("X-Forwarded-Proto", scheme)
    if host:
        headers.setdefault("X-Forwarded-Host", host)
    headers[correlation_header] = correlation
    if trace is not None:
        headers.popall("traceparent", None)
        headers.popall("tracestate", None)
        headers.extend(trace)
    return headers


def client_origin(
    *, public_url: str | None, scheme: str, host: str | None, forwarded: Mapping[str, str] | None
) -> str:
    """The origin clients use to reach us: configured, else (trusted) forwarded, else Host."""
    if public_url:
        return public_url.rstrip("/")
    if forwarded is not None:
        scheme = forwarded.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = forwarded.get("X-Forwarded-Host", host or "").split(",")[0].strip() or host
    return f"{scheme}://{host or 'localhost'}"


# A Location that is a plain absolute path ("/jobs/42", "/v1/jobs/42?wait=1"), what most APIs
# answer: resolved against any base it is the base's scheme and authority followed by the path as
# it is (nothing to encode or normalise: no percent escapes, dot segments, empty query or
# fragment), so it is resolved with strings; anything else goes through yarl.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")


def plain_path(value: str) -> bool:
    """True when `value` is a plain absolute path (see `_PLAIN_PATH`)."""
    return (
        _PLAIN_PATH.fullmatch(value) is not None
        and "/." not in value
        and not value.startswith("//")
        and not value.endswith("?")
    )


@functools.lru_cache(maxsize=256)
def _root(base: str | URL) -> str:
    """`base`'s scheme and authority as a reference resolved against it writes them (bounded:
    client origins come from Host headers)."""
    url = base if isinstance(base, URL) else URL(base)
    return str(url.join(URL("/", encoded=True)))[:-1]


def absolute_location(origin: str, location: str) -> str:
    """A client-facing Location made absolute against the client's `origin`."""
    if plain_path(location):
        return _root(origin) + location
    return str(URL(origin).join(URL(location)))


def rewrite_location(value: str, upstream: URL, origin: str) -> str:
    """Turn the upstream's absolute URL (its own host) into the client-facing one.

    Relative references and URLs of other hosts are left alone.
    """
    if plain_path(value):
        return value
    try:
        url = URL(value)
    except ValueError:
        return value
    if not url.is_absolute() or url.origin() != upstream.origin():
        return value
    return origin + (url.raw_path_qs or "/") + (f"#{url.raw_fragment}" if url.raw_fragment else "")


def upstream_location(value: str, upstream: URL) -> URL:
    """The absolute upstream URL of a Location (relative to the upstream's origin)."""
    return resolve_location(value, upstream)[0]


def resolve_location(value: str, upstream: URL) -> tuple[URL, str | None]:
    """`upstream_location`, and its text when it came for free (a plain path)."""
    if plain_path(value):
        text = _root(upstream) + value
        return URL(text, encoded=True), text
    url = URL(value, encoded=True)
    return (url if url.is_absolute() else upstream.join(url)), None


URL_HEADERS = ("Location", "Content-Location")


def encodable(value: str) -> bool:
    """True when a header value can be sent as it came (it was valid UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def percent_encoded(value: str) -> str:
    """A URL header value whose raw bytes were not UTF-8, with those bytes percent-encoded."""
    raw = value.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def usable_location(value: str) -> bool:
    """True when a `Location` is valid UTF-8 and parses as a URL reference."""
    if plain_path(value):
        return True
    if not encodable(value) or any(c in value for c in "\r\n\x00"):
        return False
    try:
        url = URL(value, encoded=True)
        _ = url.origin() if url.is_absolute() else url.raw_path
    except ValueError:
        return False
    return True


def response_headers(
    upstream_headers: CIMultiDictProxy[str], *, upstream: URL, origin: str, skip: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Headers to relay to the client: end-to-end ones with Location/Content-Location rewritten.

    A value that was not valid UTF-8 cannot be sent again byte for byte: a URL header gets its
    raw bytes percent-encoded, any other such header is left out.
    """
    headers = end_to_end(upstream_headers)
    for name in skip:
        headers.popall(name, None)
    if not all(encodable(v) for v in headers.values()):
        headers = CIMultiDict(
            (k, v if encodable(v) else percent_encoded(v))
            for k, v in headers.items()
            if encodable(v) or k.title() in URL_HEADERS
        )
    for name in URL_HEADERS:
        if name in headers:
            headers[name] = rewrite_location(headers[name], upstream, origin)
    return headers


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` of delta-seconds or an HTTP-date; None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
