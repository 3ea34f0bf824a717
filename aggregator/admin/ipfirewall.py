"""Would the systemd unit's IP firewall let the bot reach what its config names?

``IPAddressDeny=`` and ``IPAddressAllow=`` drop packets in the kernel, with no error: a feed on the
local network, a proxy or a DNS resolver that the unit blocks shows up only as a ``ConnectTimeout``
after the fetch timeout, which reads like a slow network. ``aggregator doctor`` asks systemd for
the unit's lists (``systemctl show``) and names every destination they would block.

The destinations are the ones the service connects to: each feed and the Slack API, or the proxy
that the unit's ``Environment=`` routes them through, and the DNS resolvers when a host name must
be looked up. Only :func:`read_unit` and :func:`resolve` do I/O.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

UNIT = "aggregator.service"
PROPERTIES = "LoadState,IPAddressDeny,IPAddressAllow,Environment"
RESOLVE_SECONDS = 5.0  # all the look-ups together; a name that takes longer is not checked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[Sequence[str]], Mapping[str, tuple[IPAddress, ...]]]


@dataclass(frozen=True, slots=True)
class UnitFirewall:
    """The unit's address lists and environment, as systemd has loaded them (drop-ins included)."""

    unit: str
    deny: tuple[IPNetwork, ...]
    allow: tuple[IPNetwork, ...]
    environment: tuple[tuple[str, str], ...] = ()

    def blocks(self, address: IPAddress) -> bool:
        """systemd's rule: an address on an allow list passes, whatever the deny lists say."""
        return _within(address, self.deny) and not _within(address, self.allow)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)


@dataclass(frozen=True, slots=True)
class Destination:
    """Something the service connects to: ``what`` names it for a person, ``host`` is dialled."""

    what: str
    host: str


@dataclass(frozen=True, slots=True)
class Blocked:
    destination: Destination
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    blocked: tuple[Blocked, ...]
    checked: int  # destinations whose addresses were known
    unresolved: tuple[str, ...]  # host names that did not resolve here: not checked


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


# -- reading the unit -----------------------------------------------------------------------------


def parse_unit_show(text: str, unit: str = UNIT) -> UnitFirewall | None:
    """The output of ``systemctl show -p LoadState,IPAddressDeny,IPAddressAllow,Environment``.

    None when the unit is not installed: then there is no firewall to check.
    """
    properties: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            properties[key.strip()] = value.strip()
    if properties.get("LoadState") != "loaded":
        return None
    environment = []
    for assignment in shlex.split(properties.get("Environment", "")):
        name, sep, value = assignment.partition("=")
        if sep:
            environment.append((name, value))
    return UnitFirewall(
        unit,
        _networks(properties.get("IPAddressDeny", "")),
        _networks(properties.get("IPAddressAllow", "")),
        tuple(environment),
    )


def _networks(value: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(part, strict=False) for part in value.split())


@dataclass(frozen=True, slots=True)
class Unreadable:
    """systemd runs here, but would not say (seen as a DynamicUser= whose D-Bus Hello failed)."""

    unit: str
    reason: str


def read_unit(
    unit: str = UNIT, booted_marker: Path = Path("/run/systemd/system")
) -> UnitFirewall | Unreadable | None:
    """Ask systemd for the unit's firewall; None when systemd does not run here or the unit is not
    installed."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not booted_marker.is_dir():
        return None
    try:
        result = subprocess.run(
            [systemctl, "show", unit, f"--property={PROPERTIES}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return Unreadable(unit, str(e))
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return Unreadable(unit, lines[-1] if lines else f"exit status {result.returncode}")
    return parse_unit_show(result.stdout, unit)


# -- what the service connects to -----------------------------------------------------------------


def destinations(
    feed_urls: Sequence[str], slack_api_url: str, environment: Mapping[str, str]
) -> list[Destination]:
    """Each feed and Slack, or the proxy the service reaches them through (its environment's
    ``*_PROXY`` and ``NO_PROXY``, as httpx and slack-sdk read them)."""
    found: dict[str, Destination] = {}
    routes = [(f"feed {url}", url, _feed_proxy(url, environment)) for url in feed_urls]
    routes.append((f"Slack {slack_api_url}", slack_api_url, _slack_proxy(environment)))
    for what, url, proxy in routes:
        if proxy and not _bypassed(url, environment):
            host = _host(proxy)
            found.setdefault(f"proxy {host}", Destination(f"proxy {_redacted(proxy)}", host))
        else:
            host = _host(url)
            if host:
                found.setdefault(what, Destination(what, host))
    return list(found.values())


def resolver_destinations(resolv_conf: str) -> list[Destination]:
    """The ``nameserver`` lines of /etc/resolv.conf."""
    servers = []
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(Destination(f"DNS resolver {parts[1]} in /etc/resolv.conf", parts[1]))
    return servers


def _env(environment: Mapping[str, str], name: str) -> str:
    return environment.get(name.upper()) or environment.get(name.lower()) or ""


def _feed_proxy(url: str, environment: Mapping[str, str]) -> str:
    scheme = urlsplit(url).scheme.lower()
    return _env(environment, f"{scheme}_proxy") or _env(environment, "all_proxy")


def _slack_proxy(environment: Mapping[str, str]) -> str:
    return _env(environment, "https_proxy") or _env(environment, "http_proxy")


def _bypassed(url: str, environment: Mapping[str, str]) -> bool:
    host = _host(url)
    for entry in _env(environment, "no_proxy").split(","):
        entry = entry.strip().lower().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


def _host(url: str) -> str:
    if "://" not in url:
        url = "http://" + url  # HTTPS_PROXY=10.0.0.5:3128 is allowed too
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _redacted(url: str) -> str:
    """A proxy URL without its password."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# -- the verdict ----------------------------------------------------------------------------------


def judge(
    firewall: UnitFirewall,
    wanted: Sequence[Destination],
    resolvers: Sequence[Destination],
    resolve: Resolver,
) -> Verdict:
    """Which destinations the firewall blocks. Host names are looked up (``resolve``), and then
    the DNS resolvers are destinations too."""
    names = sorted({d.host for d in wanted if _literal(d.host) is None})
    looked_up = resolve(names) if names else {}
    every = list(wanted) + (list(resolvers) if names else [])
    blocked, checked = [], 0
    for destination in every:
        literal = _literal(destination.host)
        addresses = (literal,) if literal else looked_up.get(destination.host, ())
        if not addresses:
            continue
        checked += 1
        refused = tuple(a for a in addresses if firewall.blocks(a))
        if refused:
            blocked.append(Blocked(destination, refused))
    unresolved = tuple(n for n in names if not looked_up.get(n))
    return Verdict(tuple(blocked), checked, unresolved)


def resolve(names: Sequence[str]) -> dict[str, tuple[IPAddress, ...]]:
    """Look the names up in parallel, for at most :data:`RESOLVE_SECONDS` in all."""
    pool = ThreadPoolExecutor(max_workers=min(16, max(1, len(names))))
    futures = {name: pool.submit(_addresses, name) for name in names}
    wait(futures.values(), timeout=RESOLVE_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    return {
        name: future.result()
        for name, future in futures.items()
        if future.done() and not future.cancelled() and future.exception() is None
    }


def _addresses(name: str) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ()
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return tuple(found)
