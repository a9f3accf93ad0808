"""Target safety (SSRF): which webhook URLs and resolved addresses may be connected to.

Only http(s). Link-local and cloud-metadata addresses are always refused; loopback, private and
other non-global ranges are refused unless `allow_private_targets` or a CIDR in `allowed_networks`
allows them. `GuardedResolver` filters every resolved address at connect time, so DNS rebinding
is caught; IP-literal URLs never reach a resolver, so `check_url` checks them before connecting.
"""

from __future__ import annotations

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
        """Why `address` is refused, or None when it is allowed."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
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
