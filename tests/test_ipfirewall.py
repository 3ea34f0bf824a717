"""The unit's IP firewall as ``aggregator doctor`` judges it.

The ``systemctl show`` text below is what systemd 252 printed for the shipped unit in a booted
container (tests/test_systemd_real.py runs the doctor there against the real thing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from aggregator.admin.doctor import Check, run_checks
from aggregator.admin.ipfirewall import (
    Destination,
    IPAddress,
    Resolver,
    UnitFirewall,
    Unreadable,
    destinations,
    judge,
    parse_unit_show,
    read_unit,
    resolve,
    resolver_destinations,
)
from tests.configs import link_models
from tests.feedserver import FeedServer
from tests.slackserver import TOKEN, SlackServer

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (
    "IPAddressAllow=127.0.0.53/32\n"
    "IPAddressDeny=::1/128 127.0.0.0/8 169.254.0.0/16 100.64.0.0/10 192.168.0.0/16 ff00::/8 "
    "224.0.0.0/4 fe80::/64 172.16.0.0/12 10.0.0.0/8 fc00::/7 0.0.0.0/8 fec0::/10\n"
    "Environment=PYTHONDONTWRITEBYTECODE=1\n"
    "LoadState=loaded\n"
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.fixture
def shipped() -> UnitFirewall:
    firewall = parse_unit_show(SHIPPED)
    assert firewall is not None
    return firewall


def test_the_shipped_lists_block_private_and_loopback_addresses_but_not_the_dns_stub(
    shipped: UnitFirewall,
) -> None:
    for blocked in ("127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.20.0.5", "169.254.1.1"):
        assert shipped.blocks(ip(blocked)), blocked
    for allowed in ("127.0.0.53", "93.184.216.34", "2001:db8::1", "8.8.8.8"):
        assert not shipped.blocks(ip(allowed)), allowed


def test_an_allow_entry_wins_over_a_deny_entry(shipped: UnitFirewall) -> None:
    widened = parse_unit_show(SHIPPED.replace("127.0.0.53/32", "127.0.0.53/32 10.0.0.0/24"))
    assert widened is not None
    assert shipped.blocks(ip("10.0.0.7")) and not widened.blocks(ip("10.0.0.7"))
    assert widened.blocks(ip("10.0.1.7"))


def test_a_unit_that_is_not_installed_has_no_firewall_to_check() -> None:
    text = "IPAddressAllow=\nIPAddressDeny=\nEnvironment=\nLoadState=not-found\n"
    assert parse_unit_show(text) is None
    assert parse_unit_show("") is None


def test_the_units_environment_is_read_with_its_quoting() -> None:
    text = SHIPPED.replace(
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        'Environment=PYTHONDONTWRITEBYTECODE=1 HTTPS_PROXY=http://10.0.0.5:3128 "X=a b"',
    )
    firewall = parse_unit_show(text)
    assert firewall is not None
    assert firewall.env == {
        "PYTHONDONTWRITEBYTECODE": "1",
        "HTTPS_PROXY": "http://10.0.0.5:3128",
        "X": "a b",
    }


# -- destinations ----------------------------------------------------------------------------------

FEEDS = ["https://www.whitehouse.gov/feed/", "http://intranet.corp/feed.xml"]
SLACK = "https://slack.com/api/"


def hosts(found: list[Destination]) -> dict[str, str]:
    return {d.what: d.host for d in found}


def test_without_a_proxy_each_feed_and_slack_is_dialled_directly() -> None:
    assert hosts(destinations(FEEDS, SLACK, {})) == {
        "feed https://www.whitehouse.gov/feed/": "www.whitehouse.gov",
        "feed http://intranet.corp/feed.xml": "intranet.corp",
        "Slack https://slack.com/api/": "slack.com",
    }


def test_a_proxy_replaces_what_it_carries_and_its_password_is_not_shown() -> None:
    env = {"https_proxy": "http://bot:s3cret@10.0.0.5:3128", "NO_PROXY": ".corp"}
    found = hosts(destinations(FEEDS, SLACK, env))
    # https goes through the proxy; the plain-http feed has no proxy and .corp bypasses it anyway.
    assert found == {
        "proxy http://10.0.0.5:3128": "10.0.0.5",
        "feed http://intranet.corp/feed.xml": "intranet.corp",
    }
    assert "s3cret" not in repr(found)


def test_all_proxy_carries_the_feeds_but_slack_reads_only_http_and_https_proxy() -> None:
    found = hosts(destinations(FEEDS, SLACK, {"ALL_PROXY": "10.0.0.9:8080"}))
    assert found == {
        "proxy http://10.0.0.9:8080": "10.0.0.9",
        "Slack https://slack.com/api/": "slack.com",
    }


def test_resolvers_come_from_the_nameserver_lines() -> None:
    text = (
        "# comment\nsearch corp\nnameserver 127.0.0.53\nnameserver 10.255.255.53\noptions edns0\n"
    )
    assert [d.host for d in resolver_destinations(text)] == ["127.0.0.53", "10.255.255.53"]


# -- the verdict -----------------------------------------------------------------------------------


def lookup(table: Mapping[str, tuple[str, ...]]) -> Resolver:
    """Name service as a table, for names that exist only in these tests."""

    def resolver(names: Sequence[str]) -> dict[str, tuple[IPAddress, ...]]:
        return {n: tuple(ip(a) for a in table[n]) for n in names if n in table}

    return resolver


def test_names_are_looked_up_and_then_the_resolver_must_be_reachable(shipped: UnitFirewall) -> None:
    wanted = destinations(FEEDS, SLACK, {})
    resolvers = resolver_destinations("nameserver 10.255.255.53\n")
    table = {"www.whitehouse.gov": ("93.184.216.34",), "slack.com": ("2600:1f18::1",)}
    verdict = judge(shipped, wanted, resolvers, lookup(table))

    assert [(b.destination.what, b.addresses) for b in verdict.blocked] == [
        ("DNS resolver 10.255.255.53 in /etc/resolv.conf", (ip("10.255.255.53"),))
    ]
    assert verdict.checked == 3  # two feeds' hosts resolved, plus the resolver
    assert verdict.unresolved == ("intranet.corp",)


def test_with_only_addresses_no_resolver_is_needed(shipped: UnitFirewall) -> None:
    wanted = destinations(["http://127.0.0.1:8080/a.xml"], "http://127.0.0.1:9090/api/", {})
    resolvers = resolver_destinations("nameserver 10.255.255.53\n")
    verdict = judge(shipped, wanted, resolvers, lookup({}))
    assert [b.destination.what for b in verdict.blocked] == [
        "feed http://127.0.0.1:8080/a.xml",
        "Slack http://127.0.0.1:9090/api/",
    ]
    assert verdict.checked == 2 and verdict.unresolved == ()


def test_resolving_localhost_for_real(shipped: UnitFirewall) -> None:
    found = resolve(["localhost"])
    assert ip("127.0.0.1") in found["localhost"] or ip("::1") in found["localhost"]
    verdict = judge(shipped, [Destination("feed http://localhost/", "localhost")], [], resolve)
    assert [b.destination.host for b in verdict.blocked] == ["localhost"]


# -- in the doctor's report ------------------------------------------------------------------------


def firewall_check(checks: list[Check]) -> Check | None:
    found = [c for c in checks if c.name == "unit firewall"]
    assert len(found) <= 1
    return found[0] if found else None


def write_config(tmp_path: Path, feed_urls: list[str], slack: SlackServer) -> Path:
    config = tmp_path / "config"
    config.mkdir()
    shipped_topics = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
    (config / "topics.toml").write_text(shipped_topics, encoding="utf-8")
    link_models(config)
    (config / "aggregator.toml").write_text(f'[slack]\napi_url = "{slack.url}"\n', encoding="utf-8")
    (config / "feeds.toml").write_text(
        "".join(f'[[feeds]]\nurl = "{u}"\n' for u in feed_urls), encoding="utf-8"
    )
    return config


def doctor(
    tmp_path: Path, feed_urls: list[str], slack: SlackServer, unit: str | None
) -> list[Check]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.255.255.53\n", encoding="utf-8")
    return run_checks(
        write_config(tmp_path, feed_urls, slack),
        {"SLACK_BOT_TOKEN": TOKEN},
        db_path=str(tmp_path / "bot.db"),
        unit=lambda: None if unit is None else parse_unit_show(unit),
        resolv_conf=resolv,
    )


def test_the_doctor_names_each_blocked_destination_and_the_drop_in_that_allows_it(
    tmp_path: Path,
) -> None:
    with FeedServer() as feeds, SlackServer() as slack:
        url = feeds.serve("/a.xml", b"<rss/>")
        check = firewall_check(doctor(tmp_path, [url], slack, SHIPPED))

    assert check is not None and not check.ok
    assert check.detail.startswith("aggregator.service's IPAddressDeny= blocks 2 of 2 destinations")
    assert "ConnectTimeout" in check.detail
    assert f"feed {url}; Slack {slack.url}" in check.detail
    assert "DNS resolver" not in check.detail  # addresses need no look-up
    assert (
        "`systemctl edit aggregator.service`, add [Service] IPAddressAllow=127.0.0.1 " in check.fix
    )


def test_the_doctor_passes_once_a_drop_in_allows_the_address(tmp_path: Path) -> None:
    allowed = SHIPPED.replace(
        "IPAddressAllow=127.0.0.53/32", "IPAddressAllow=127.0.0.53/32 127.0.0.1/32"
    )
    with FeedServer() as feeds, SlackServer() as slack:
        check = firewall_check(doctor(tmp_path, [feeds.serve("/a.xml", b"<rss/>")], slack, allowed))
    assert check is not None and check.ok
    assert "let it reach all 2 destinations" in check.detail


def test_without_the_unit_installed_there_is_no_firewall_check(tmp_path: Path) -> None:
    with FeedServer() as feeds, SlackServer() as slack:
        checks = doctor(tmp_path, [feeds.serve("/a.xml", b"<rss/>")], slack, None)
    assert firewall_check(checks) is None
    assert [c.name for c in checks][:2] == ["config", "database"]


def test_where_systemd_does_not_run_there_is_nothing_to_ask(tmp_path: Path) -> None:
    assert read_unit(booted_marker=tmp_path / "no-such-dir") is None


def test_when_systemd_will_not_say_the_doctor_says_so_and_how_to_look(tmp_path: Path) -> None:
    # Seen in a booted container: as a DynamicUser=, systemctl's D-Bus Hello was refused.
    refused = Unreadable("aggregator.service", "Transport endpoint is not connected")
    with FeedServer() as feeds, SlackServer() as slack:
        config = write_config(tmp_path, [feeds.serve("/a.xml", b"<rss/>")], slack)
        checks = run_checks(
            config,
            {"SLACK_BOT_TOKEN": TOKEN},
            db_path=str(tmp_path / "bot.db"),
            unit=lambda: refused,
        )
    check = firewall_check(checks)
    assert check is not None and check.ok
    assert check.detail == (
        "not checked: systemd would not say (Transport endpoint is not connected); as root, "
        "`systemctl show aggregator.service -p IPAddressDeny -p IPAddressAllow` lists them"
    )
