"""Which network addresses a feed may be fetched from: the guard against SSRF. Pure: no I/O.

A feed URL is third-party input, and so is every redirect. Without a guard, a URL (or a
redirect) naming ``169.254.169.254`` reads a cloud's instance metadata (credentials included) from
the host the bot runs on, and one naming ``10.0.0.5`` probes the intranet. So, by default, only
public addresses are fetched:

- link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata endpoints
  (fd00:ec2::254, 100.100.100.200, 168.63.129.16) are refused unless listed in
  ``[fetch] allow_networks``;
- loopback and private ranges (127.0.0.0/8, ::1, 0.0.0.0/8, 10/8, 172.16/12, 192.168/16,
  100.64/10, fc00::/7 ...) are refused unless ``[fetch] allow_private = true`` (an intranet feed,
  or the tests' servers on 127.0.0.1) or ``allow_networks`` lists them;
- any other address that is not globally routable (multicast, reserved, documentation ranges) is
  refused unless ``allow_networks`` lists it.

An IPv6 address that carries an IPv4 one (``::ffff:169.254.169.254``, NAT64, 6to4) is judged by
the IPv4 address it carries. Host names written as numbers in any spelling (``0xA9FEA9FE``,
``2852039166``, ``0251.0376.0251.0376``) are read the way the C library reads them, since that is
what a connection would reach. :mod:`aggregator.ingest.fetch` applies the verdict to the URL of
every hop and, after DNS resolution, to every address it connects to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "168.63.129.16/32")
)
LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))
LOOPBACK = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128"))
PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15",
        "fc00::/7", "fec0::/10",
    )
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """What ``[fetch] allow_private`` and ``[fetch] allow_networks`` allow beyond the public net."""

    allow_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, allow_private: bool, allow_networks: Iterable[str]) -> AddressPolicy:
        return cls(
            allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        )


def literal_address(host: str) -> IPAddress | None:
    """The address a host name written as a number stands for, in any spelling; else None."""
    host = host.strip().strip("[]").rstrip(".")  # "169.254.169.254." is the same address
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not host or not host[0].isdigit():
        return None
    try:  # the C library's reading: hex, octal, and 1- to 3-part forms ("169.254.43518")
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def refusal(address: IPAddress, policy: AddressPolicy) -> str | None:
    """Why the policy refuses ``address`` (a sentence with the fix), or None when it is allowed."""
    if any(
        address in network
        for network in policy.allow_networks
        if network.version == address.version
    ):
        return None
    judged = _carried_ipv4(address) or address
    if judged is not address and any(
        judged in network for network in policy.allow_networks if network.version == 4
    ):
        return None
    shown = str(address) if judged is address else f"{address} (that is {judged})"
    exact = f'allow_networks = ["{judged}/{judged.max_prefixlen}"]'
    if _within(judged, METADATA):
        return (
            f"{shown} is a cloud metadata address; refused so a feed cannot read the host's "
            f"credentials (to fetch it anyway, set [fetch] {exact})"
        )
    if _within(judged, LINK_LOCAL):
        return (
            f"{shown} is a link-local address, where cloud metadata services answer; refused "
            f"(to fetch it anyway, set [fetch] {exact})"
        )
    if _within(judged, LOOPBACK) or _within(judged, PRIVATE):
        if policy.allow_private:
            return None
        kind = "a loopback" if _within(judged, LOOPBACK) else "a private"
        return (
            f"{shown} is {kind} address; refused by default (for an intranet feed, set "
            f"[fetch] allow_private = true, or {exact})"
        )
    if not judged.is_global or judged.is_multicast:
        return (
            f"{shown} is not a public address (multicast, reserved or documentation range); "
            f"refused (to fetch it anyway, set [fetch] {exact})"
        )
    return None


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks if network.version == address.version)


def _carried_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, compatible), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None
