"""Where a webhook may be sent: the server-side request forgery check.

A target must be http(s), carry no credentials, and every address its host resolves to must be a
public one: loopback, private, link-local (cloud metadata lives there), multicast, reserved and
other non-global ranges are refused, unless the host is listed in ``VIDQ_WEBHOOK_ALLOWED_HOSTS``
(exact host names or IP literals; listing one host allows that host only). The check runs when a
target is registered and again before every attempt, and the delivery connects to the very address
it checked, so a DNS answer that changes between the check and the connect cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobs.errors import InvalidParameter

MAX_URL_LENGTH = 2000
# Cloud metadata services, named so the refusal says why (both are also non-global addresses).
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(InvalidParameter):
    """A URL that webhooks may not be sent to; ``param`` names the field it came from."""

    code = "invalid_webhook_url"


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to ``address`` (None: an allow-listed host, connect by name)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str | None


def resolve_host(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refusal(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for name in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return f"a {name.replace('_', '-')} address"
    if not address.is_global:
        return "a non-public address"
    return None


def check_target(
    url: str, *, allowed_hosts: frozenset[str], param: str = "webhook_url", resolve: Resolver = resolve_host
) -> Target:
    """Return the checked target or raise TargetRefused (a 422 naming ``param``)."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"{param} is longer than {MAX_URL_LENGTH} characters", param=param)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"{param} must be an http or https URL", param=param)
    if parts.username is not None or parts.password is not None:
        raise TargetRefused(f"{param} must not carry credentials", param=param)
    host = (parts.hostname or "").lower()
    if not host:
        raise TargetRefused(f"{param} has no host", param=param)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused(f"{param} has an invalid port", param=param) from None
    if host in allowed_hosts:
        return Target(url=url, scheme=parts.scheme, host=host, port=port, address=None)

    try:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host, port)]
    except (OSError, UnicodeError, ValueError):
        raise TargetRefused(f"the host of {param} ({host}) cannot be resolved", param=param) from None
    if not addresses:
        raise TargetRefused(f"the host of {param} ({host}) cannot be resolved", param=param)
    for address in addresses:  # every answer must be public: one private A record is enough to refuse
        reason = _refusal(address)
        if reason is not None:
            raise TargetRefused(
                f"{param} is not allowed: {host} resolves to {address}, {reason} "
                "(list the host in VIDQ_WEBHOOK_ALLOWED_HOSTS to allow it)",
                param=param,
            )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=str(addresses[0]))
