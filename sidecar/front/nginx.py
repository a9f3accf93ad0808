"""A front plan as nginx configuration: an include for nginx's `http` block (a file in
`/etc/nginx/conf.d/`, say) with

    upstreams   the sidecar and each upstream of the route table, with HTTP/1.1 keep-alive
    maps        `$sidecar_front_target`, where a request goes: the route table's rules as
                regexes on "METHOD PATH" in their order (nginx takes the first matching regex
                of a map, as the sidecar takes the first matching route), then the long-polls
                (`Prefer`) and the paths the sidecar reads as sent (`$request_uri`)
    one server  one location proxying to that target, with the sidecar's forwarding rules:
                Host, X-Forwarded-*, Location rewriting, bodies streamed both ways, its client
                timeouts, and a read timeout above the longest the sidecar holds a call

The path is matched as nginx decodes it (`$uri`, with `merge_slashes off`), as the sidecar
matches its decoded path; the one difference, dot segments nginx resolves, sends the call to the
sidecar, which decides. TLS, `worker_connections` and the rest of nginx stay the operator's.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from yarl import URL

from .plan import SIDECAR, FrontPlan, Rule

PREFIX = "sidecar_front"  # of every name this file defines (upstreams, variables)
KEEPALIVE = 256  # idle connections each nginx worker keeps to each upstream
# A GET whose Prefer header holds a `wait` preference (RFC 7240: comma-separated preferences,
# each `name[=value]` with `;` parameters), however the sidecar would read it: `wait` as a
# parameter of another preference does not count.
LONG_POLL = r"~*^GET (?:[^,]*,)*\s*wait\s*="
# A path with a `.` or `..` segment, plain or percent-encoded, before any query.
DOT_SEGMENT = r"~^[^?]*/(?:\.|%2[eE]){1,2}(?:[/?]|$)"
# Response headers by which an upstream steers nginx itself; the sidecar gives them no meaning.
ACCEL = "X-Accel-Redirect X-Accel-Expires X-Accel-Limit-Rate X-Accel-Buffering X-Accel-Charset"
# Debian's CA bundle, for upstreams reached over TLS (the sidecar verifies their certificates).
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True, slots=True)
class FrontOptions:
    """What the route table cannot say: where the front listens and how it reaches the sidecar."""

    listen: str = "0.0.0.0:80"  # nginx's `listen`: host:port, [v6]:port or a port
    sidecar: str = "127.0.0.1:8080"  # the sidecar's proxy listener, host:port
    server_name: str = "_"  # nginx's `server_name`
    trust_forwarded: bool = False  # keep clients' X-Forwarded-* (behind a trusted balancer)
    source: str = ""  # the config file, named in the header


_LISTEN = re.compile(r"^(?:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):)?[0-9]{1,5}$")
_SIDECAR = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
_SERVER_NAMES = re.compile(r"^[A-Za-z0-9.*_-]+(?: [A-Za-z0-9.*_-]+)*$")


def option_problems(options: FrontOptions) -> list[str]:
    """What in `options` nginx could not read as one address or name (each is written into a
    directive as it is)."""
    problems = []
    if not _LISTEN.match(options.listen):
        problems.append(f"--listen {options.listen!r}: use host:port, [v6]:port or a port")
    if not _SIDECAR.match(options.sidecar):
        problems.append(f"--sidecar {options.sidecar!r}: use host:port or [v6]:port")
    if not _SERVER_NAMES.match(options.server_name):
        problems.append(f"--server-name {options.server_name!r}: names separated by spaces")
    return problems


def comment(text: str) -> str:
    """`text` safe in a `#` comment: control characters (a line break would end it) escaped."""
    return "".join(f"\\x{ord(c):02x}" if c < " " or c == "\x7f" else c for c in text)


_PLAIN = frozenset(string.ascii_letters + string.digits + "/_-~!&',:;=@%<>`\"")


def pcre_literal(text: str) -> str:
    """`text` matched literally by PCRE: printable punctuation escaped, spaces, control
    characters and non-ASCII as `\\xHH` of their UTF-8 bytes (nginx matches bytes)."""
    out: list[str] = []
    for char in text:
        if char in _PLAIN:
            out.append(char)
        elif " " < char < "\x7f":
            out.append("\\" + char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


_NGINX_ESCAPES = "\"'\\trn"  # what nginx's reader turns a backslash before into something else


def quoted(text: str) -> str:
    """`text` as a double-quoted nginx string that nginx reads back as `text`: a quote
    escaped, and a backslash doubled only where nginx would take it for an escape (before a
    quote, a backslash, `t`, `r`, `n`), so regexes stay readable (`\\.` stays `\\.`)."""
    out: list[str] = []
    for index, char in enumerate(text):
        after = text[index + 1 : index + 2]
        if char == '"':
            out.append('\\"')
        elif char == "\\" and (after == "" or after in _NGINX_ESCAPES):
            out.append("\\\\")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def rule_regex(rule: Rule) -> str:
    """The map key of a rule: a regex on "METHOD DECODED-PATH", anchored at both ends."""
    method = "[^ ]+" if rule.method == "*" else pcre_literal(rule.method)
    path = "".join("[^/]+" if named else pcre_literal(text) for text, named in rule.parts)
    return f"~^{method} {path}$"


def origin_regex(url: URL) -> str:
    """A URL at `url`'s origin, as the sidecar recognises one to rewrite (scheme and host in
    any case, the port as written), capturing what follows it."""
    port = f":{url.explicit_port}" if url.explicit_port is not None else ""
    host = f"[{url.raw_host}]" if ":" in (url.raw_host or "") else url.raw_host or ""
    return f"~*^{url.scheme}://{pcre_literal(host)}{port}(?:/|(?=[?#])|$)"


def duration(seconds: float) -> str:
    """A duration as nginx reads it."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def server_address(url: URL) -> str:
    """host:port of an upstream for nginx's `server` (the scheme's port when none is given)."""
    host = url.raw_host or ""
    return f"{f'[{host}]' if ':' in host else host}:{url.port}"


def render_nginx(plan: FrontPlan, options: FrontOptions) -> str:
    """The nginx include of `plan`."""
    lines = _header(plan, options)
    lines += _upstreams(plan, options)
    lines += _target_maps(plan)
    lines += _per_target_maps(plan, options)
    lines += _server(plan, options)
    return "\n".join(lines) + "\n"


def _header(plan: FrontPlan, options: FrontOptions) -> list[str]:
    to_sidecar = [f"{r.method} {comment(r.template)} ({r.route})" for r in plan.synchronised]
    if plan.long_polls:
        to_sidecar.append("GET with a wait preference in Prefer (long-polls of Locations)")
    if plan.monitor:
        to_sidecar.append(f"{plan.monitor}... (the status monitor)")
    to_sidecar.append("paths with a . or .. segment (the sidecar matches them as sent)")
    return [
        f"# Generated by `sidecar export nginx` from {comment(options.source or 'the config')}:",
        "# a front that sends the synchronising sidecar only what it answers, and everything",
        "# else straight to the API. Include it in nginx's http block (/etc/nginx/conf.d/) and",
        "# generate it again whenever the routes change, then `nginx -s reload`.",
        "#",
        "# To the sidecar:",
        *(f"#   {line}" for line in to_sidecar),
        "# To the API: everything else.",
        "#",
        "# Each held call holds a client connection and one to the sidecar: give nginx a",
        "# worker_connections (and worker_rlimit_nofile) of twice the calls it may hold at once.",
        "",
    ]


def _upstreams(plan: FrontPlan, options: FrontOptions) -> list[str]:
    # The sidecar closes a connection idle for clients.idle_timeout: nginx must let go first.
    idle_s = min(60.0, max(1.0, plan.idle_timeout_s - 5))
    lines = [
        f"upstream {PREFIX}_{SIDECAR} {{",
        f"    server {options.sidecar};",
        f"    keepalive {KEEPALIVE};  # idle connections kept per worker",
        f"    keepalive_timeout {duration(idle_s)};  # under the sidecar's idle_timeout "
        f"({duration(plan.idle_timeout_s)})",
        "}",
    ]
    for upstream in plan.upstreams:
        what = ", ".join(upstream.routes) if upstream.routes else ""
        role = "the default upstream" if upstream is plan.default else f"routes: {what}"
        lines += [
            f"upstream {PREFIX}_{upstream.name} {{  # {comment(str(upstream.url))} ({role})",
            f"    server {server_address(upstream.url)};  # its name is resolved when nginx loads",
            f"    keepalive {KEEPALIVE};",
            "    keepalive_timeout 60s;  # keep it under the API's own idle timeout",
            "}",
        ]
    return [*lines, ""]


def _target_maps(plan: FrontPlan) -> list[str]:
    by_route, by_prefer = f"${PREFIX}_by_route", f"${PREFIX}_by_prefer"
    lines = [
        "# Where the route table sends a method and path: the first route whose method and",
        "# template match (nginx tries a map's regexes in order). Synchronised routes go to the",
        "# sidecar; named ones to their upstream.",
        f'map "$request_method $uri" {by_route} {{',
    ]
    width = max((len(quoted(rule_regex(r))) for r in plan.rules), default=0)
    for rule in plan.rules:
        kind = "synchronised" if rule.target == SIDECAR else "named"
        key = quoted(rule_regex(rule)).ljust(width)
        lines.append(f"    {key}  {rule.target};  # {rule.route} ({kind})")
    lines.append(f"    default {plan.default.name};")
    if plan.left_out:
        lines.append(
            f"    # and, to the default upstream like any other: {', '.join(plan.left_out)}"
        )
    lines.append("}")
    if plan.long_polls:
        lines += [
            "# Long-polls: a GET with Prefer: wait=N, held by the sidecar when it names a",
            "# tracked Location (else passed on by it).",
            f'map "$request_method $http_prefer" {by_prefer} {{',
            f'    "GET "  {by_route};  # no Prefer at all: no regex to run',
            f"    {quoted(LONG_POLL)}  {SIDECAR};",
            f"    default {by_route};",
            "}",
        ]
    lines += [
        "# Paths the sidecar reads as sent: its status monitor; a dot segment, which nginx",
        "# resolves before matching and the sidecar does not.",
        f"map $request_uri ${PREFIX}_target {{",
    ]
    if plan.monitor:
        lines.append(f"    {quoted('~^' + pcre_literal(plan.monitor))}  {SIDECAR};")
    otherwise = by_prefer if plan.long_polls else by_route
    lines += [f"    {quoted(DOT_SEGMENT)}  {SIDECAR};", f"    default {otherwise};", "}", ""]
    return lines


def _per_target_maps(plan: FrontPlan, options: FrontOptions) -> list[str]:
    origin = _origin(plan, options)
    lines = [f"map ${PREFIX}_target ${PREFIX}_pass {{"]
    lines.append(f"    {SIDECAR}  http://{PREFIX}_{SIDECAR};")
    for upstream in plan.upstreams:
        base = upstream.base_path
        lines.append(
            f"    {upstream.name}  {upstream.url.scheme}://{PREFIX}_{upstream.name}{base};"
        )
    lines += ["}", f"map ${PREFIX}_target ${PREFIX}_host {{"]
    lines.append(f"    {SIDECAR}  $http_host;  # the client's: the sidecar's answers name it")
    lines += [f"    {u.name}  {quoted(u.host)};" for u in plan.upstreams]
    lines += [
        "}",
        "# An upstream's own absolute Content-Location, made client-facing as its Location is.",
        f"map $upstream_http_content_location ${PREFIX}_content_location {{",
    ]
    for upstream in plan.upstreams:
        key = quoted(origin_regex(upstream.url) + f"(?<{PREFIX}_rest>.*)$")
        lines.append(f"    {key}  {quoted(f'{origin}/${PREFIX}_rest')};")
    lines += ["    default $upstream_http_content_location;", "}"]
    if options.trust_forwarded:
        lines += _forwarded_maps()
    if any(u.url.scheme == "https" for u in plan.upstreams):
        lines += [f"map ${PREFIX}_target ${PREFIX}_tls_name {{"]
        lines += [f"    {u.name}  {quoted(u.url.raw_host or '')};" for u in plan.upstreams]
        lines.append("}")
    return [*lines, ""]


def _forwarded_maps() -> list[str]:
    """Behind a trusted balancer: the client's X-Forwarded-Proto/Host kept (the first of each
    names the origin), else the front's own."""
    lines = []
    for header, own in (("proto", "$scheme"), ("host", "$http_host")):
        variable = f"$http_x_forwarded_{header}"
        lines += [
            f"map {variable} ${PREFIX}_forwarded_{header} {{",
            f'    ""  {own};',
            f"    default {variable};",
            "}",
            f"map ${PREFIX}_forwarded_{header} ${PREFIX}_origin_{header} {{",
            f'    "~^\\s*(?<{PREFIX}_first_{header}>[^,\\s]+)"  ${PREFIX}_first_{header};',
            f"    default {own};",
            "}",
        ]
    return lines


def _origin(plan: FrontPlan, options: FrontOptions) -> str:
    """The client-facing origin, as the sidecar makes it: `proxy.public_url`, else the
    (trusted) forwarded scheme and host, else the request's own."""
    if plan.public_url:
        return plan.public_url.rstrip("/")
    if options.trust_forwarded:
        return f"${PREFIX}_origin_proto://${PREFIX}_origin_host"
    return "$scheme://$http_host"


def _server(plan: FrontPlan, options: FrontOptions) -> list[str]:
    if options.trust_forwarded:
        forwarded = [
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            f"proxy_set_header X-Forwarded-Proto ${PREFIX}_forwarded_proto;",
            f"proxy_set_header X-Forwarded-Host ${PREFIX}_forwarded_host;",
        ]
    else:
        forwarded = [
            "proxy_set_header X-Forwarded-For $remote_addr;  # clients' own are replaced",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header X-Forwarded-Host $http_host;",
            'proxy_set_header Forwarded "";',
        ]
    origin = _origin(plan, options)
    # A named capture: a positional one would be taken over by the regexes of the maps the
    # replacement reads (the forwarded origin's).
    rest = f"(?<{PREFIX}_rest>.*)$"
    redirects = [
        f"proxy_redirect {quoted(origin_regex(u.url) + rest)} {quoted(f'{origin}/${PREFIX}_rest')};"
        for u in plan.upstreams
    ]
    tls = []
    if any(u.url.scheme == "https" for u in plan.upstreams):
        tls = [
            "proxy_ssl_server_name on;",
            f"proxy_ssl_name ${PREFIX}_tls_name;",
            "proxy_ssl_verify on;",
            f"proxy_ssl_trusted_certificate {CA_BUNDLE};  # your system's CA bundle",
        ]
    location = [
        f"proxy_pass ${PREFIX}_pass$request_uri;  # the request's target byte for byte",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";  # keep-alive to the sidecar and the API',
        f"proxy_set_header Host ${PREFIX}_host;",
        *forwarded,
        "proxy_buffering off;  # answers streamed, as the sidecar streams them",
        "proxy_request_buffering off;  # bodies too: the sidecar applies its own limits",
        f"proxy_connect_timeout {duration(plan.connect_timeout_s)};",
        "# Above the longest the sidecar may send nothing on a call: the command's answer, the",
        "# longest budget, a GET of the Location (pass-through calls get it too: nginx cannot",
        "# set a timeout per target).",
        f"proxy_read_timeout {duration(plan.sidecar_silence_s)};",
        "proxy_pass_header Server;  # the answer's own, as the sidecar relays them",
        "proxy_pass_header Date;",
        f"proxy_ignore_headers {ACCEL};",
        *redirects,
        "proxy_hide_header Content-Location;",
        f"add_header Content-Location ${PREFIX}_content_location always;",
        *tls,
    ]
    return [
        "server {",
        f"    listen {options.listen};",
        f"    server_name {options.server_name};",
        "    # TLS is yours to add: listen 443 ssl; ssl_certificate ...; ssl_certificate_key ...;",
        "",
        "    # The sidecar's client limits (clients.*).",
        f"    client_header_timeout {duration(plan.header_timeout_s)};",
        f"    client_body_timeout {duration(plan.body_timeout_s)};",
        f"    keepalive_timeout {duration(plan.idle_timeout_s)};",
        "    client_max_body_size 0;  # the sidecar refuses synchronised bodies past max_body",
        "    underscores_in_headers on;  # headers pass on as the sidecar passes them",
        "    merge_slashes off;  # the sidecar matches //a as sent",
        "",
        "    location / {",
        *(f"        {line}" for line in location),
        "    }",
        "}",
    ]
