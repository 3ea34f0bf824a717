"""``aggregator doctor``: is this installation able to do its job? Each check in plain words.

Checks, in order: the config (and its topics' examples), the database (writable, migrated, WAL),
the Slack token (``auth.test``) and its scopes, each configured channel (it exists and the bot can
post there, asked with ``conversations.info``, never by posting), whether the bot can read the
team's reactions on its alerts in every topic's channel (``[feedback]``), how many feeds answered on
their last fetch, and, where the systemd unit is installed, whether its IP firewall would block a
feed, Slack, a proxy or a DNS resolver. Every failed check says how to fix it. One informational
line says when the feedparser tuning is off (another feedparser than the pinned one), since
parsing is slower then.

The database is only read. Opening it through :class:`~aggregator.store.Store` would migrate it
under a running older service, switch it to WAL behind the check's back, or create it owned by
whoever ran the doctor (root), where the service's own user could not write it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aggregator.admin.ipfirewall import (
    Blocked,
    Resolver,
    UnitFirewall,
    Unreadable,
    destinations,
    judge,
    read_unit,
    resolve,
    resolver_destinations,
)
from aggregator.config.load import load_config, slack_token
from aggregator.config.model import DEFAULT_SLACK_API_URL, Config, FeedConfig
from aggregator.errors import ConfigError, DeliveryError
from aggregator.ingest.parse import tuning_off_reason
from aggregator.notify.slack import ChannelInfo, SlackSink, TokenInfo
from aggregator.rules.matcher import check_examples
from aggregator.store import MIGRATIONS

# What the bot calls: post and edit, read history after a crash and for the team's reactions
# (conversations.history returns them; reactions:read is for reactions.get, which the bot never
# calls), resolve #names to ids. groups:history is checked per private channel.
REQUIRED_SCOPES = ("chat:write", "chat:write.public", "channels:history", "channels:read")
PRIVATE_HISTORY = "groups:history"
MANIFEST = "deploy/slack-app-manifest.yml"
LISTED_FEEDS = 5  # failing feeds named in the report; the rest are counted
RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, whether it passed, what was seen, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class SlackProbe(Protocol):
    """The two read-only Slack calls the doctor makes (``SlackSink`` provides them)."""

    def token_info(self) -> TokenInfo: ...

    def channel_info(self, channel: str) -> ChannelInfo: ...


@dataclass(frozen=True, slots=True)
class FeedRow:
    url: str
    status: str
    consecutive_errors: int
    last_error: str | None
    last_fetch_at: str | None
    moved_from: str | None


def run_checks(
    config_dir: Path,
    environ: Mapping[str, str],
    *,
    db_path: str | None = None,
    slack: Callable[[str, str], SlackProbe] | None = None,
    unit: Callable[[], UnitFirewall | Unreadable | None] = read_unit,
    resolv_conf: Path = RESOLV_CONF,
    resolver: Resolver = resolve,
) -> list[Check]:
    """Every check, in order. ``slack(token, api_url)`` builds the Slack client; ``unit()`` reads
    the systemd unit's firewall (None: not installed, so not checked)."""
    checks: list[Check] = []
    config_check, config = check_config(config_dir, environ)
    checks.append(config_check)

    path = db_path or (config.settings.database if config else None)
    rows: list[FeedRow] | None = None
    if path is None:
        checks.append(Check("database", False, "not checked: the config is invalid", _FIX_DB_ARG))
    else:
        db_check, rows = check_database(path)
        checks.append(db_check)

    token = slack_token(environ)
    api_url = config.settings.slack_api_url if config else _api_url(environ)
    build = slack or _slack_sink
    token_checks, probe, scopes = check_token(token, api_url, build)
    checks.extend(token_checks)
    if config is not None:
        channels = sorted({t.channel for t in config.topics} | _ops(config))
        if probe is not None:
            infos = {channel: _channel_info(probe, channel) for channel in channels}
            checks.extend(check_channel(probe, c, scopes, infos[c]) for c in channels)
            if config.settings.feedback.enabled:
                topic_channels = {t.channel for t in config.topics}
                readable = {c: i for c, i in infos.items() if c in topic_channels}
                checks.append(check_feedback(readable, scopes))
        elif channels:
            detail = f"not checked ({', '.join(channels)}): the Slack token check failed"
            checks.append(Check("channels", False, detail, "fix the Slack token first"))
        checks.append(check_feeds(config.feeds, rows))
        firewall = unit()
        if isinstance(firewall, Unreadable):
            detail = (
                f"not checked: systemd would not say ({firewall.reason}); as root, "
                f"`systemctl show {firewall.unit} -p IPAddressDeny -p IPAddressAllow` lists them"
            )
            checks.append(Check("unit firewall", True, detail))
        elif firewall is not None:
            checks.append(check_firewall(config, firewall, _read_text(resolv_conf), resolver))
    checks.extend(check_parse_tuning(tuning_off_reason()))
    return checks


def format_report(checks: Sequence[Check]) -> str:
    lines = []
    for check in checks:
        mark = "ok    " if check.ok else "FAILED"
        lines.append(f"{mark}  {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"        fix: {check.fix}")
    passed = sum(c.ok for c in checks)
    verdict = "all good" if passed == len(checks) else "fix the FAILED checks above"
    lines.append(f"{passed} of {len(checks)} checks passed: {verdict}.")
    return "\n".join(lines)


# -- config ---------------------------------------------------------------------------------------


def check_config(config_dir: Path, environ: Mapping[str, str]) -> tuple[Check, Config | None]:
    try:
        config = load_config(config_dir, environ)
        problems = check_examples(config.topics)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        shown = "; ".join(e.problems[:3]) + (
            f"; and {len(e.problems) - 3} more" if len(e.problems) > 3 else ""
        )
        return (
            Check(
                "config",
                False,
                f"{config_dir} has {len(e.problems)} problem(s): {shown}",
                f"run `aggregator --config {config_dir} check-config` for every problem with its "
                "file, line and key; the service refuses to start (exit 78) until it passes",
            ),
            None,
        )
    topics = ", ".join(t.name for t in config.topics)
    detail = (
        f"{config_dir} is valid: {len(config.feeds)} feeds, {len(config.topics)} topics "
        f"({topics}); every topic's examples pass"
    )
    return Check("config", True, detail), config


# -- database -------------------------------------------------------------------------------------

_FIX_DB_ARG = "fix the config, or name the database with --db PATH"


def check_database(path: str) -> tuple[Check, list[FeedRow] | None]:
    """Writable, migrated to this version's schema, in WAL mode; also returns the feed rows."""
    file = Path(path)
    directory = file.parent
    if not file.exists():
        if directory.is_dir() and os.access(directory, os.W_OK | os.X_OK):
            detail = f"{path} does not exist yet; the service creates it on its first start"
            return Check("database", True, detail), None
        return (
            Check(
                "database",
                False,
                f"{path} does not exist and {directory} is not a writable directory",
                f"create {directory} writable by the service's user (under systemd, "
                "StateDirectory= does it), or point --db at a writable place",
            ),
            None,
        )
    if not os.access(file, os.R_OK | os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        return (
            Check(
                "database",
                False,
                f"{path} (or its directory, which holds the -wal file) is not writable by uid "
                f"{os.getuid()}",
                "run the doctor as the service's user (deploy/README.md shows how with "
                "systemd-run), or give that user the file and its directory; if `lsattr` shows "
                "the file immutable (i), `chattr -i` it; a read-only mount needs remounting",
            ),
            None,
        )
    latest = max(MIGRATIONS)
    try:
        uri = f"{file.resolve().as_uri()}?mode=rw"  # never creates; as_uri escapes ? and #
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            version = 0
            if "schema_migrations" in tables:
                version = int(
                    conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0
                )
            # A real write, rolled back: an immutable file opens, reads and locks, then refuses
            # the first write (and root passes every permission check above).
            conn.execute("BEGIN IMMEDIATE")
            try:
                if "schema_migrations" in tables:
                    conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) "
                        "VALUES (-1, 'doctor write check')"
                    )
            finally:
                conn.execute("ROLLBACK")
            rows = _feed_rows(conn) if "feeds" in tables else []
        finally:
            conn.close()
    except sqlite3.Error as e:
        return (
            Check(
                "database",
                False,
                f"{path} cannot be opened for writing: {e}",
                "check the disk is not full or mounted read-only, the file is not immutable "
                "(lsattr; chattr -i) and is a SQLite database; restore it from a backup if it is "
                "damaged",
            ),
            None,
        )
    if version < latest:
        return (
            Check(
                "database",
                False,
                f"{path} is at schema version {version}; this version of the bot uses {latest}",
                "restart the service (systemctl restart aggregator): it migrates the database "
                "forward on start, keeping its data",
            ),
            rows,
        )
    if version > latest:
        return (
            Check(
                "database",
                False,
                f"{path} is at schema version {version}, newer than this bot knows ({latest})",
                "a newer version of the bot wrote it: upgrade the bot again, or restore a backup",
            ),
            rows,
        )
    if mode != "wal":
        return (
            Check(
                "database",
                False,
                f"{path} is in {mode} journal mode, not WAL",
                "start the service once: it switches the database to WAL mode",
            ),
            rows,
        )
    detail = f"{path} is writable, migrated (schema version {version}) and in WAL mode"
    return Check("database", True, detail), rows


def _feed_rows(conn: sqlite3.Connection) -> list[FeedRow]:
    query = (
        "SELECT url, status, consecutive_errors, last_error, last_fetch_at, moved_from FROM feeds"
    )
    return [FeedRow(*row) for row in conn.execute(query)]


# -- Slack ----------------------------------------------------------------------------------------


def _slack_sink(token: str, api_url: str) -> SlackProbe:
    return SlackSink(token, api_url, timeout=10.0)


def _api_url(environ: Mapping[str, str]) -> str:
    url = environ.get("SLACK_API_URL") or DEFAULT_SLACK_API_URL
    return url if url.endswith("/") else url + "/"


def _ops(config: Config) -> set[str]:
    return {config.settings.ops_channel} if config.settings.ops_channel else set()


def check_token(
    token: str | None, api_url: str, build: Callable[[str, str], SlackProbe]
) -> tuple[list[Check], SlackProbe | None, frozenset[str] | None]:
    """The token is set and valid, and holds the scopes; returns the client for channel checks."""
    if not token:
        return (
            [
                Check(
                    "Slack token",
                    False,
                    "no token is set, so alerts would only be printed on the console",
                    "set SLACK_BOT_TOKEN (xoxb-...), or under systemd store it as the "
                    "slack-bot-token credential (deploy/README.md)",
                )
            ],
            None,
            None,
        )
    probe = build(token, api_url)
    try:
        info = probe.token_info()
    except DeliveryError as e:
        fix = (
            "copy the Bot User OAuth Token (xoxb-...) from the app's OAuth & Permissions page "
            "again, store it, and restart the service"
        )
        if not e.permanent:
            fix = f"check that this machine can reach {api_url} (proxy, firewall, DNS)"
        return [Check("Slack token", False, f"auth.test failed: {e.reason}", fix)], None, None
    checks = [Check("Slack token", True, f"valid: the bot is {info.user} in {info.team}")]
    if info.scopes is None:
        detail = "Slack did not report the token's scopes (no x-oauth-scopes header); not checked"
        checks.append(Check("Slack scopes", True, detail))
        return checks, probe, None
    missing = [s for s in REQUIRED_SCOPES if s not in info.scopes]
    if missing:
        checks.append(
            Check(
                "Slack scopes",
                False,
                f"the token lacks {', '.join(missing)}",
                f"add them under OAuth & Permissions ({MANIFEST} lists every scope and why), "
                "reinstall the app to the workspace, and store the token it shows",
            )
        )
    else:
        checks.append(Check("Slack scopes", True, f"has {', '.join(REQUIRED_SCOPES)}"))
    return checks, probe, info.scopes


def _channel_info(probe: SlackProbe, channel: str) -> ChannelInfo | DeliveryError:
    try:
        return probe.channel_info(channel)
    except DeliveryError as e:
        return e


def check_channel(
    probe: SlackProbe, channel: str, scopes: frozenset[str] | None,
    info: ChannelInfo | DeliveryError | None = None,
) -> Check:  # fmt: skip
    """The channel exists, is not archived, and the bot may post there (checked without posting)."""
    name = f"channel {channel}"
    if info is None:
        info = _channel_info(probe, channel)
    if isinstance(info, DeliveryError):
        e = info
        return Check(
            name,
            False,
            f"cannot look it up: {e.reason}",
            "check the channel name in topics.toml (or [slack] ops_channel); for a private "
            "channel, invite the bot (/invite @bot) and grant groups:read",
        )
    if info.is_archived:
        return Check(
            name,
            False,
            f"{info.id} is archived",
            "unarchive it in Slack, or point its topics at another channel",
        )
    if info.is_member:
        return Check(name, True, f"exists ({info.id}) and the bot is a member")
    public_posting = not info.is_private and (scopes is None or "chat:write.public" in scopes)
    if public_posting:
        return Check(
            name,
            True,
            f"exists ({info.id}); the bot is not a member but may post with chat:write.public "
            "(invite it so that it can read the channel: after a crash, to never post twice, "
            "and for the team's reactions)",
        )
    return Check(
        name,
        False,
        f"exists ({info.id}) but the bot is not a member and cannot post there",
        f"invite the bot: /invite @bot in {channel}"
        + ("" if info.is_private else ", or add the chat:write.public scope"),
    )


def check_feedback(
    infos: Mapping[str, ChannelInfo | DeliveryError], scopes: frozenset[str] | None
) -> Check:
    """The bot can read the team's reactions in every topic's channel: it is a member (history
    is read as a member), and holds channels:history, and groups:history for a private one."""
    blocked: list[str] = []
    fixes: list[str] = []
    if scopes is not None and "channels:history" not in scopes:
        blocked.append("the token lacks channels:history")
        fixes.append("add channels:history")
    for channel, info in sorted(infos.items()):
        if isinstance(info, DeliveryError):
            continue  # its own check says why
        if not info.is_member:
            blocked.append(f"{channel} (the bot is not a member)")
            fixes.append(f"invite the bot to {channel} (/invite @bot)")
        elif info.is_private and scopes is not None and PRIVATE_HISTORY not in scopes:
            blocked.append(f"{channel} (private, and the token lacks {PRIVATE_HISTORY})")
            fixes.append(f"add {PRIVATE_HISTORY} ({MANIFEST}) and reinstall the app")
    if blocked:
        return Check(
            "Slack feedback", False,
            f"the team's reactions cannot be read as labels in: {'; '.join(blocked)}",
            "; ".join(dict.fromkeys(fixes)) + ", or set [feedback] enabled = false",
        )  # fmt: skip
    readable = sum(1 for i in infos.values() if not isinstance(i, DeliveryError))
    return Check("Slack feedback", True,
                 f"reactions on alerts are readable in {readable} channel(s)")  # fmt: skip


# -- parsing --------------------------------------------------------------------------------------


def check_parse_tuning(off_reason: str | None) -> list[Check]:
    """Nothing when the feedparser tuning applies; else one line that passes, for information:
    parsing still works, only slower."""
    return [] if off_reason is None else [Check("parsing", True, off_reason)]


# -- feeds ----------------------------------------------------------------------------------------


def check_feeds(feeds: Sequence[FeedConfig], rows: list[FeedRow] | None) -> Check:
    """N of M configured feeds answered on their last fetch."""
    total = len(feeds)
    if total == 0:
        return Check("feeds", False, "no feeds are configured", "add feeds to feeds.toml "
                     "(or `aggregator feeds add URL`)")  # fmt: skip
    if rows is None:
        return Check("feeds", True, f"{total} configured; none fetched yet (no database yet)")
    by_url = {r.url: r for r in rows}
    by_origin = {r.moved_from: r for r in rows if r.moved_from}
    reachable, unknown = 0, 0
    failing: list[str] = []
    for feed in feeds:
        row = by_url.get(feed.url) or by_origin.get(feed.url)
        if row is None or row.last_fetch_at is None:
            unknown += 1
        elif row.status == "gone" or row.consecutive_errors > 0:
            reason = "410 Gone: no longer polled" if row.status == "gone" else row.last_error
            failing.append(f"{feed.url} ({reason or 'failed'})")
        else:
            reachable += 1
    detail = f"{reachable} of {total} feeds were reachable on their last fetch"
    if unknown:
        detail += f"; {unknown} not fetched yet"
    if not failing:
        return Check("feeds", True, detail)
    named = "; ".join(failing[:LISTED_FEEDS])
    more = f"; and {len(failing) - LISTED_FEEDS} more" if len(failing) > LISTED_FEEDS else ""
    return Check(
        "feeds",
        False,
        f"{detail}; failing: {named}{more}",
        "`aggregator feeds status` shows each feed's errors; fix the URL, or remove the feed "
        "with `aggregator feeds remove URL`",
    )


# -- the unit's IP firewall -----------------------------------------------------------------------


def check_firewall(
    config: Config, firewall: UnitFirewall, resolv_conf: str, resolver: Resolver
) -> Check:
    """Does the unit's IPAddressDeny= let the service reach its feeds, Slack, proxy and DNS?"""
    wanted = destinations(
        [f.url for f in config.feeds], config.settings.slack_api_url, firewall.env
    )
    verdict = judge(firewall, wanted, resolver_destinations(resolv_conf), resolver)
    unchecked = ""
    if verdict.unresolved:
        names = f"{len(verdict.unresolved)} host name{'s' if len(verdict.unresolved) > 1 else ''}"
        unchecked = f"; {names} did not resolve here: not checked"
    name = "unit firewall"
    if not verdict.blocked:
        detail = (
            f"{firewall.unit}'s IPAddressDeny=/IPAddressAllow= let it reach all "
            f"{verdict.checked} destinations (feeds, Slack, proxy, DNS){unchecked}"
        )
        return Check(name, True, detail)
    blocked = verdict.blocked
    shown = "; ".join(_blocked_text(b) for b in blocked[:LISTED_FEEDS])
    more = f"; and {len(blocked) - LISTED_FEEDS} more" if len(blocked) > LISTED_FEEDS else ""
    addresses = " ".join(sorted({str(a) for b in blocked for a in b.addresses}))
    return Check(
        name,
        False,
        f"{firewall.unit}'s IPAddressDeny= blocks {len(blocked)} of {verdict.checked} "
        f"destinations, and the service sees that only as a ConnectTimeout: {shown}{more}"
        f"{unchecked}",
        f"if you trust them, allow them in a drop-in: `systemctl edit {firewall.unit}`, add "
        f"[Service] IPAddressAllow={addresses} and save; it applies at once, to the running "
        "service too (deploy/README.md, 'What the unit locks down')",
    )


def _blocked_text(blocked: Blocked) -> str:
    addresses = [str(a) for a in blocked.addresses]
    if addresses == [blocked.destination.host]:
        return blocked.destination.what  # the URL already shows the address
    return f"{blocked.destination.what} ({', '.join(addresses)})"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
