"""Where a result webhook may go: http(s), to public addresses only.

A batch's ``result_webhook_url`` is checked twice. When the batch is submitted, on its
text: the scheme, and a host that is an IP literal or ``localhost``. At delivery, on
every address its host resolves to; the POST then connects to an address that was
checked (with the original Host header and TLS server name), so a second lookup cannot
rebind the name to another address. Refused: loopback, private (RFC 1918, fc00::/7),
link-local (169.254/16 with the cloud metadata address, fe80::/10), multicast,
unspecified, reserved and any other non-global address, also when written as an IPv6
form embedding an IPv4 one.

``webhook_allow_private`` lifts the address rule (it is on by default in sandbox mode,
where the receiver is usually on 127.0.0.1); the URL must still be http(s), and delivery
still connects to the addresses it resolved.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HINT = "result webhooks go only to public addresses (see webhook_allow_private)"


class Refused(Exception):
    """This URL may not receive result webhooks: trying again will not change that."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Route:
    """One way to deliver: the URL to connect to, and what keeps the original host."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def address_class(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address ("loopback", "private"...), or None if it is one."""
    embedded = _embedded_v4(ip)
    if embedded is not None:
        return address_class(embedded)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"  # shared (100.64/10), documentation, benchmarking ranges
    return None


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def host_refusal(host: str) -> str | None:
    """Why ``host`` may not receive webhooks, known from its text alone (no DNS), or None."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # always loopback (RFC 6761)
        return f"{host} is a loopback address: {_HINT}"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None  # a name: checked once it resolves, at delivery
    cls = address_class(ip)
    return f"{host} is {_a(cls)} address: {_HINT}" if cls else None


def _a(cls: str) -> str:
    return f"an {cls}" if cls[0] in "aeiou" else f"a {cls}"


def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """The submit-time check: why ``url`` is refused, or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None  # not parseable: delivery fails it, with the parser's reason
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL"
    if allow_private or not host:
        return None  # no host (a schema-valid oddity): delivery fails it, with a clear error
    return host_refusal(host)


async def routes(raw_url: str, *, allow_private: bool) -> list[Route]:
    """The delivery-time check: where to POST for ``raw_url``, best first.

    Raises ``Refused`` for a URL that can never receive a webhook, ``OSError`` when its
    name does not resolve now (worth retrying). The caller bounds the lookup's time.
    """
    try:
        url = httpx.URL(raw_url)
        _ = urlsplit(raw_url).port  # stricter than httpx about brackets and ports
    except (httpx.InvalidURL, ValueError) as e:
        raise Refused(f"not a valid URL: {e}") from None
    if url.scheme not in ("http", "https"):
        raise Refused("must be an http or https URL")
    host = url.raw_host.decode("ascii")
    if not host:
        raise Refused("the URL has no host")
    why = None if allow_private else host_refusal(url.host)
    if why is not None:
        raise Refused(why)
    try:
        ipaddress.ip_address(url.host)
        return [Route(url)]  # an IP literal: checked above, nothing to resolve
    except ValueError:
        pass
    port = url.port or (443 if url.scheme == "https" else 80)
    found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in found:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        cls = None if allow_private else address_class(ip)
        if cls is not None:
            raise Refused(f"{url.host} resolves to {ip}, {_a(cls)} address: {_HINT}")
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise OSError(f"{url.host} resolves to no address")
    # the first address, then the first of the other family: a broken IPv6 route still delivers
    picked = [addresses[0]]
    picked += [ip for ip in addresses if ip.version != addresses[0].version][:1]
    pinned = {"host": url.netloc.decode("ascii")}
    tls = {"sni_hostname": host} if url.scheme == "https" else {}
    return [Route(url.copy_with(host=str(ip)), pinned, tls) for ip in picked]
