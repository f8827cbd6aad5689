"""Where a webhook may be sent: the server-side request forgery check.

A target must be http(s), carry no credentials, and every address its host resolves to must be a
public one: loopback, private, link-local (cloud metadata lives there), multicast, reserved and
other non-global ranges are refused (IPv6 addresses that carry an IPv4 one — mapped, 6to4,
Teredo, NAT64 — are judged by that IPv4 address), unless the host and port are listed in
``VIDQ_WEBHOOK_ALLOWED_HOSTS`` (``host:port``, ``host:*`` for every port, a bare host for its
scheme's default port). Every refusal after the URL's syntax is one generic message: a client
learns nothing about what a name resolves to. The check runs when a
target is registered and again before every attempt, and the delivery connects to the very address
it checked, so a DNS answer that changes between the check and the connect cannot slip through.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobs.errors import InvalidParameter

log = logging.getLogger(__name__)

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


NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped (::ffff:a.b.c.d), 6to4 (2002::/16), Teredo
    (2001::/32, the client's address) or NAT64 (64:ff9b::/96). A gateway would deliver to that
    IPv4 address, so it is the one to check."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refusal(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:  # a gateway delivers to the embedded IPv4 address: it alone decides
            return _refusal(inner)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for name in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return f"a {name.replace('_', '-')} address"
    if not address.is_global:
        return "a non-public address"
    return None


def parse_allowed_hosts(value: str) -> frozenset[str]:
    """``VIDQ_WEBHOOK_ALLOWED_HOSTS`` as normalized entries: ``host:port`` (that port only),
    ``host:*`` (every port) or a bare ``host`` (its scheme's default port, 80 or 443). IPv6 literals
    in brackets (``[::1]:8080``); a bare IPv6 literal is a host without a port."""
    entries = set()
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        else:
            host, port = entry, ""
        entries.add(f"{host}:{port}" if port else host)
    return frozenset(entries)


def is_allowed(allowed: frozenset[str], host: str, port: int, *, default_port: int) -> bool:
    return f"{host}:{port}" in allowed or f"{host}:*" in allowed or (host in allowed and port == default_port)


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
    if is_allowed(allowed_hosts, host, port, default_port=443 if parts.scheme == "https" else 80):
        return Target(url=url, scheme=parts.scheme, host=host, port=port, address=None)

    # One message for every refusal after this point: what a name resolves to, whether it resolves
    # at all and which rule refused it are facts about the operator's network a client must not learn.
    refused = TargetRefused(
        f"{param} is not an allowed webhook target: its host must resolve to public addresses only "
        "(an operator can allow a private one with VIDQ_WEBHOOK_ALLOWED_HOSTS=host:port)",
        param=param,
    )
    try:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host, port)]
    except (OSError, UnicodeError, ValueError):
        raise refused from None
    if not addresses:
        raise refused
    for address in addresses:  # every answer must be public: one private A record is enough to refuse
        reason = _refusal(address)
        if reason is not None:
            log.info("webhook target %s:%d refused: %s resolves to %s, %s", host, port, host, address, reason)
            raise refused
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=str(addresses[0]))
