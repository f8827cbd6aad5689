"""The webhook target check: only public http(s) hosts, unless a host is explicitly allowed."""

from __future__ import annotations

import pytest

from jobs.webhooks.targets import TargetRefused, check_target

NONE_ALLOWED: frozenset[str] = frozenset()


def resolves_to(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.215.14/hook", "http or https"),
        ("http://user:pw@93.184.215.14/hook", "credentials"),
        ("http:///hook", "no host"),
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
    ],
)
def test_refused_targets_name_the_field_and_the_reason(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason) as refused:
        check_target(url, allowed_hosts=NONE_ALLOWED)
    assert refused.value.param == "webhook_url"


def test_a_name_with_any_private_answer_is_refused() -> None:
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7"):
        check_target(
            "https://hooks.example/x", allowed_hosts=NONE_ALLOWED, resolve=resolves_to("93.184.215.14", "10.0.0.7")
        )


def test_public_targets_are_pinned_to_the_checked_address() -> None:
    target = check_target(
        "https://hooks.example:8443/x", allowed_hosts=NONE_ALLOWED, resolve=resolves_to("93.184.215.14")
    )
    assert (target.host, target.port, target.address) == ("hooks.example", 8443, "93.184.215.14")


def test_an_allowed_host_is_allowed_and_only_that_host() -> None:
    allowed = frozenset({"127.0.0.1"})
    assert check_target("http://127.0.0.1:9000/hook", allowed_hosts=allowed).address is None
    for other in ("http://localhost:9000/hook", "http://10.0.0.1/hook", "http://127.0.0.2/hook"):
        with pytest.raises(TargetRefused):
            check_target(other, allowed_hosts=allowed)


def test_an_unresolvable_host_is_refused() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(TargetRefused, match="cannot be resolved"):
        check_target("https://nowhere.invalid/", allowed_hosts=NONE_ALLOWED, param="url", resolve=fail)
