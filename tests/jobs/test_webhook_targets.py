"""The webhook target check: only public http(s) hosts, unless a host is explicitly allowed."""

from __future__ import annotations

import ipaddress

import pytest

from jobs.webhooks.targets import TargetRefused, check_target, parse_allowed_hosts

NONE_ALLOWED: frozenset[str] = frozenset()


def resolves_to(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.215.14/hook", "http or https"),
        ("http://user:pw@93.184.215.14/hook", "credentials"),
        ("http:///hook", "no host"),
    ],
)
def test_malformed_targets_name_the_field_and_the_reason(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason) as refused:
        check_target(url, allowed_hosts=NONE_ALLOWED)
    assert refused.value.param == "webhook_url"


GENERIC = "is not an allowed webhook target"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),  # a name: resolved, then refused
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://100.64.0.1/", "non-public"),
        ("http://[2002:7f00:1::1]/", "6to4 of 127.0.0.1"),
        ("http://[2002:a00:1::]/", "6to4 of 10.0.0.1"),
        ("http://[2002:a9fe:a9fe::]/", "6to4 of the metadata address"),
        # Teredo: the client's IPv4 is stored inverted in the last 32 bits (here 10.0.0.1 / 127.0.0.1).
        ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "Teredo client 10.0.0.1"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo client 127.0.0.1"),
        ("http://[64:ff9b::10.0.0.1]/", "NAT64 of 10.0.0.1"),
        ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 of the metadata address"),
    ],
)
def test_non_public_targets_get_one_generic_refusal(url: str, why: str) -> None:
    with pytest.raises(TargetRefused, match=GENERIC) as refused:
        check_target(url, allowed_hosts=NONE_ALLOWED)
    assert refused.value.param == "webhook_url"
    host = url.split("//", 1)[1].split("/", 1)[0]
    for leak in ("loopback", "metadata", "multicast", "resolves", host.strip("[]")):
        assert leak not in refused.value.message, why


def test_ipv6_that_embeds_a_public_ipv4_is_judged_by_it() -> None:
    # 6to4 and NAT64 of 93.184.215.14 are public; a mapped public address too.
    for literal in ("2002:5db8:d70e::1", "64:ff9b::5db8:d70e", "::ffff:93.184.215.14"):
        target = check_target(f"http://[{literal}]/hook", allowed_hosts=NONE_ALLOWED)
        assert target.address is not None and ipaddress.ip_address(target.address) == ipaddress.ip_address(literal)


def test_a_name_with_any_private_answer_is_refused_without_naming_it() -> None:
    with pytest.raises(TargetRefused, match=GENERIC) as refused:
        check_target(
            "https://hooks.example/x", allowed_hosts=NONE_ALLOWED, resolve=resolves_to("93.184.215.14", "10.0.0.7")
        )
    assert "10.0.0.7" not in refused.value.message


def test_public_targets_are_pinned_to_the_checked_address() -> None:
    target = check_target(
        "https://hooks.example:8443/x", allowed_hosts=NONE_ALLOWED, resolve=resolves_to("93.184.215.14")
    )
    assert (target.host, target.port, target.address) == ("hooks.example", 8443, "93.184.215.14")


def test_an_allowed_host_is_allowed_and_only_that_host() -> None:
    allowed = frozenset({"127.0.0.1:*"})
    assert check_target("http://127.0.0.1:9000/hook", allowed_hosts=allowed).address is None
    for other in ("http://localhost:9000/hook", "http://10.0.0.1/hook", "http://127.0.0.2/hook"):
        with pytest.raises(TargetRefused):
            check_target(other, allowed_hosts=allowed)


def test_allow_list_entries_are_host_and_port() -> None:
    allowed = parse_allowed_hosts("hooks.internal:8443, [fd00::5]:9000, 10.0.0.9 ,cache.local:*")
    assert allowed == {"hooks.internal:8443", "fd00::5:9000", "10.0.0.9", "cache.local:*"}
    assert check_target("https://hooks.internal:8443/x", allowed_hosts=allowed).address is None
    assert check_target("http://[fd00::5]:9000/x", allowed_hosts=allowed).address is None
    assert check_target("http://10.0.0.9/x", allowed_hosts=allowed).address is None  # bare host: default port
    assert check_target("http://cache.local:6379/x", allowed_hosts=allowed).address is None
    for elsewhere in ("https://hooks.internal:22/x", "http://[fd00::5]:9001/x", "http://10.0.0.9:6379/x"):
        with pytest.raises(TargetRefused, match=GENERIC):
            check_target(elsewhere, allowed_hosts=allowed, resolve=resolves_to("10.0.0.9"))


def test_an_unresolvable_host_gets_the_same_refusal() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(TargetRefused, match=GENERIC) as refused:
        check_target("https://nowhere.invalid/", allowed_hosts=NONE_ALLOWED, param="url", resolve=fail)
    assert refused.value.param == "url"
