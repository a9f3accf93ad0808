"""Target safety (SSRF): which webhook URLs and resolved addresses may be connected to.

Only http(s). Link-local and cloud-metadata addresses are always refused; loopback, private and
other non-global ranges are refused unless `allow_private_targets` or a CIDR in `allowed_networks`
allows them. An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`,
IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`,
Teredo `2001::/32`) is judged by the IPv4 address it reaches as well.

A host name is resolved when a subscription is created or changed (refused at once when every
address is refused) and again at every connect: `GuardedResolver` filters each resolved
address, so DNS rebinding is caught. IP-literal URLs never reach a resolver, so `check_url`
checks them before connecting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..config import Webhooks

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local, AWS/GCP/Azure metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/8",
        "::/128",
        "224.0.0.0/4",
        "ff00::/8",
        "255.255.255.255/32",
    )
)


NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to (mapped, compatible, NAT64, 6to4, Teredo)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    raw = ip.packed
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # not :: nor ::1
        found.append(ipaddress.IPv4Address(raw[12:]))
    if ip in NAT64:
        found.append(ipaddress.IPv4Address(raw[12:]))
    if ip in NAT64_LOCAL:  # RFC 6052 /48: bits 48-63 and 72-95 (bits 64-71 are the u octet)
        found.append(ipaddress.IPv4Address(raw[6:8] + raw[9:11]))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    return found


class TargetRefused(OSError):
    """A webhook target the policy refuses (an OSError so aiohttp reports it as a DNS error)."""


class TargetPolicy:
    """Decides whether an address may be a webhook target."""

    def __init__(self, allow_private: bool, allowed_networks: Sequence[str]) -> None:
        self.allow_private = allow_private
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)

    @classmethod
    def from_settings(cls, webhooks: Webhooks) -> TargetPolicy:
        """The policy of the `webhooks:` block."""
        return cls(webhooks.allow_private_targets, webhooks.allowed_networks)

    def refusal(self, address: str) -> str | None:
        """Why `address` is refused, or None when it is allowed (it and any IPv4 address it
        embeds)."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        for embedded in embedded_ipv4(ip):
            reason = self._refusal(embedded)
            if reason:
                return f"{ip} embeds {reason}"
        return self._refusal(ip)

    def _refusal(self, ip: IPAddress) -> str | None:
        if any(ip in net for net in ALWAYS_REFUSED):
            return f"{ip} is a link-local, metadata or reserved address (always refused)"
        if ip.is_global or self.allow_private:
            return None
        if any(ip in net for net in self.allowed):
            return None
        return f"{ip} is a loopback or private address (not allowed by webhooks config)"

    def check_url(self, url: str) -> str:
        """Raise `TargetRefused` for a non-http(s) URL or a refused IP literal; else the host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetRefused(f"{url!r} is not an http(s) URL")
        host = parts.hostname
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        reason = self.refusal(host)
        if reason:
            raise TargetRefused(reason)
        return host


async def resolve_refusal(
    policy: TargetPolicy, url: str, resolver: AbstractResolver, timeout_s: float = 2.0
) -> str | None:
    """Why a URL's host name is refused now (every address it resolves to is refused), or None.
    A name that does not resolve (yet) is not refused here: delivery checks again at connect."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return None  # an IP literal: `check_url` judged it
    except ValueError:
        pass
    try:
        async with asyncio.timeout(timeout_s):
            results = await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except (OSError, TimeoutError):
        return None
    reasons = [policy.refusal(r["host"]) for r in results]
    if results and all(reasons):
        return f"{host} resolves only to refused addresses: {'; '.join(filter(None, reasons))}"
    return None


class GuardedResolver(AbstractResolver):
    """A resolver that drops every address the policy refuses (checked at connect time)."""

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host`; raise `TargetRefused` when no allowed address remains."""
        results = await self.inner.resolve(host, port, family)
        allowed, reasons = [], []
        for result in results:
            reason = self.policy.refusal(result["host"])
            if reason is None:
                allowed.append(result)
            else:
                reasons.append(reason)
        if not allowed:
            raise TargetRefused(f"{host} resolves only to refused addresses: {'; '.join(reasons)}")
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self.inner.close()
