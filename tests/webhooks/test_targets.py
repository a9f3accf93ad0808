"""Target safety: URL checks and the guarded resolver (DNS rebinding)."""

from __future__ import annotations

import pytest

from sidecar.webhooks.targets import GuardedResolver, TargetPolicy, TargetRefused

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
