"""Target safety: URL checks and the guarded resolver (DNS rebinding)."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp.resolver import DefaultResolver

from sidecar.webhooks.targets import (
    GuardedResolver,
    TargetPolicy,
    TargetRefused,
    embedded_ipv4,
    resolve_refusal,
)

STRICT = TargetPolicy(False, [])
OPEN = TargetPolicy(True, [])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
def test_always_refused(url: str) -> None:
    for policy in (STRICT, OPEN):
        with pytest.raises(TargetRefused):
            policy.check_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "http://10.1.2.3/", "http://[::1]/"])
def test_private_refused_unless_allowed(url: str) -> None:
    with pytest.raises(TargetRefused):
        STRICT.check_url(url)
    OPEN.check_url(url)


def test_allowed_networks() -> None:
    policy = TargetPolicy(False, ["10.0.0.0/8"])
    policy.check_url("http://10.9.9.9/hook")
    with pytest.raises(TargetRefused):
        policy.check_url("http://192.168.1.1/hook")


def test_public_and_hostnames_pass_the_url_check() -> None:
    assert STRICT.check_url("https://93.184.216.34/x") == "93.184.216.34"
    assert STRICT.check_url("https://localhost/x") == "localhost"


async def test_resolver_refuses_names_resolving_to_loopback() -> None:
    resolver = GuardedResolver(STRICT)
    try:
        with pytest.raises(TargetRefused):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    resolver = GuardedResolver(OPEN)
    try:
        assert await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


@pytest.mark.parametrize(
    ("address", "reaches"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64, well-known prefix
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1:7f00:0:100::", "127.0.0.1"),  # NAT64 local-use /48 (u octet skipped)
        ("2002:7f00:1::", "127.0.0.1"),  # 6to4
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo client (obfuscated)
        ("2001:0:a9fe:a9fe:8000:63bf:3fff:fdd2", "169.254.169.254"),  # Teredo server
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_embed(address: str, reaches: str) -> None:
    assert reaches in str(embedded_ipv4(ipaddress.ip_address(address)))
    reason = STRICT.refusal(address)
    assert reason is not None and reaches in reason
    with pytest.raises(TargetRefused):
        STRICT.check_url(f"http://[{address}]/hook")
    if reaches.startswith("169.254"):  # metadata stays refused even with private targets on
        with pytest.raises(TargetRefused):
            OPEN.check_url(f"http://[{address}]/hook")


def test_a_public_ipv4_behind_nat64_passes() -> None:
    assert STRICT.refusal("64:ff9b::5db8:d822") is None  # 93.184.216.34


async def test_a_name_is_refused_when_every_address_it_resolves_to_is() -> None:
    resolver = DefaultResolver()
    reason = await resolve_refusal(STRICT, "http://localhost/hook", resolver)
    assert reason is not None and reason.startswith("localhost resolves only to refused")
    assert await resolve_refusal(OPEN, "http://localhost/hook", resolver) is None
    # A name that does not resolve (yet) is left to the connect-time check.
    assert await resolve_refusal(STRICT, "http://no-such-host.invalid/", resolver) is None
    await resolver.close()
