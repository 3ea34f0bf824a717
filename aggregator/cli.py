"""The ``aggregator`` command: a thin click layer over the modules.

Global options: ``--config DIR`` (default ``./config``, or ``$AGGREGATOR_CONFIG``, else the
embedded defaults) and ``--db PATH`` (overrides ``[storage] database``). Exit codes: 0 done,
1 failed, 2 invalid config or input (``check-config``), 78 invalid config at service start.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator import __version__
from aggregator.config import Config, resolve_config_dir, slack_token
from aggregator.errors import AggregatorError, ConfigError
from aggregator.logs import setup_logging

if TYPE_CHECKING:  # the commands import what they need when they run, to start fast
    from collections.abc import Iterable

    from aggregator.config import TopicConfig
    from aggregator.evaluation import Item
    from aggregator.match import TopicMatcher
    from aggregator.models import Entry
    from aggregator.store import Store

log = logging.getLogger("aggregator")


@dataclass
class Context:
    config_arg: str | None
    db: str | None

    @property
    def config_dir(self) -> Path:
        return resolve_config_dir(self.config_arg, os.environ)

    def load(self) -> Config:
        """The validated config, or exit 2 with every problem listed."""
        from aggregator.config import load_config

        try:
            return load_config(self.config_dir, os.environ)
        except ConfigError as e:
            _fail_config(e)
            raise  # unreachable: _fail_config exits

    def db_path(self, config: Config) -> str:
        return self.db or config.settings.database


def _fail_config(error: ConfigError, code: int = 2) -> None:
    click.echo(f"config is invalid ({len(error.problems)} problem(s)):", err=True)
    for problem in error.problems:
        click.echo(f"  {problem}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_arg",
    metavar="DIR",
    help="Config directory (default ./config, or $AGGREGATOR_CONFIG, else the embedded defaults).",
)
@click.option("--db", metavar="PATH", help="Database file (overrides [storage] database).")
@click.option(
    "--log-level",
    default=lambda: os.environ.get("AGGREGATOR_LOG_LEVEL", "info"),
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    show_default="info, or $AGGREGATOR_LOG_LEVEL",
)
@click.option(
    "--log-format",
    default=lambda: os.environ.get("AGGREGATOR_LOG_FORMAT", "auto"),
    type=click.Choice(["auto", "text", "journal", "json"]),
    show_default="auto, or $AGGREGATOR_LOG_FORMAT",
    help="auto: journal priorities under systemd, readable text otherwise.",
)
@click.version_option(__version__, prog_name="aggregator")
@click.pass_context
def main(
    ctx: click.Context, config_arg: str | None, db: str | None, log_level: str, log_format: str
) -> None:
    """Political-news alert bot: RSS/Atom feeds in, one Slack alert per matching story out."""
    token = slack_token(os.environ)
    setup_logging(log_level, log_format, secrets=[token] if token else [])
    ctx.obj = Context(config_arg, db)


@main.command()
@click.option(
    "--tick",
    type=click.FloatRange(min=0.05),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Advanced: how often the scheduler looks for due feeds (tests use a short tick).",
)
@click.option(
    "--stop-grace",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Advanced: how long SIGTERM waits for the cycle in flight before abandoning it "
    "(keep it below the unit's TimeoutStopSec).",
)
@click.pass_obj
def run(obj: Context, tick: float, stop_grace: float) -> None:
    """Run the service: poll feeds on schedule and deliver alerts until stopped.

    SIGHUP, or saving a config file, reloads the config (an invalid one is refused and the old one
    stays live). SIGTERM finishes or abandons the cycle in flight and exits 0. Exit 78: the
    config was invalid at start.
    """
    from aggregator.service import serve

    sys.exit(serve(obj.config_dir, os.environ, db_path=obj.db, tick=tick, stop_grace=stop_grace))


@main.command()
@click.option(
    "--once", is_flag=True, required=True, help="Run one cycle over every feed, then exit."
)
@click.pass_obj
def poll(obj: Context, once: bool) -> None:
    """Run one cycle: fetch every feed, match, store, deliver, then exit.

    Exits 0 even when some feeds fail (they are reported); non-zero only when the cycle could not
    run at all.
    """
    from aggregator.service import Runtime

    try:
        runtime = Runtime(obj.config_dir, os.environ, db_path=obj.db)
    except ConfigError as e:
        _fail_config(e)
        return
    except AggregatorError as e:
        raise click.ClickException(str(e)) from e
    try:
        runtime.recover(alone=False)
        report = runtime.cycle(everything=True)
    finally:
        runtime.close()
    for feed in report.feeds:
        if feed.status in ("failed", "gone"):
            click.echo(f"feed failed: {feed.url}: {feed.reason}", err=True)
    click.echo(report.summary(), err=True)


@main.command("check-config")
@click.pass_obj
def check_config(obj: Context) -> None:
    """Validate the config files and run every topic's examples. Exit 2 on any problem."""
    from aggregator.match import check_examples

    config = obj.load()
    problems = check_examples(config.topics)
    if problems:
        _fail_config(ConfigError(problems))
    click.echo(
        f"config OK: {obj.config_dir}: {len(config.feeds)} feeds, {len(config.topics)} topics "
        f"({', '.join(t.name for t in config.topics)}); examples pass"
    )


@main.command()
@click.option(
    "--feeds-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Serve these feed files instead of the built-in selection.",
)
@click.pass_obj
def demo(obj: Context, feeds_dir: Path | None) -> None:
    """Run one full cycle offline: serve real feed snapshots on 127.0.0.1 and show the alerts."""
    from aggregator.demo import run_demo

    config_dir = obj.config_dir
    try:
        run_demo(config_dir, feeds_dir=feeds_dir, echo=click.echo)
    except ConfigError as e:
        _fail_config(e)


# -- feeds (the logic lives in aggregator/feeds_admin.py) ---------------------------------------


@main.group()
def feeds() -> None:
    """List, add, remove, import and export feeds, and show their health."""


def _editable_config_dir(obj: Context) -> Path:
    from aggregator.config import DEFAULTS_DIR

    directory = obj.config_dir
    if directory.resolve() == DEFAULTS_DIR.resolve():
        raise click.ClickException(
            "no config directory to edit: create ./config or pass --config DIR"
        )
    return directory


@feeds.command("list")
@click.pass_obj
def feeds_list(obj: Context) -> None:
    """The configured feeds."""
    from aggregator.feeds_admin import render_list

    click.echo(render_list(obj.load().feeds))


@feeds.command("add")
@click.argument("url")
@click.option("--name", default="", help="Source name in alerts (default: the feed's title).")
@click.option(
    "--topics",
    multiple=True,
    metavar="A,B",
    help="Topics every item of this feed belongs to (for primary sources).",
)
@click.option("--interval", default=None, metavar="DURATION", help='Poll interval, e.g. "10m".')
@click.option("--no-check", is_flag=True, help="Do not fetch the feed once before adding it.")
@click.pass_obj
def feeds_add(
    obj: Context, url: str, name: str, topics: tuple[str, ...], interval: str | None, no_check: bool
) -> None:
    """Fetch URL once to check it is a readable feed, then append it to feeds.toml.

    Comments and layout of feeds.toml are kept; a running service picks the change up.
    """
    from aggregator.feeds_admin import add_to_config, probe_feed

    directory = _editable_config_dir(obj)
    config = obj.load()
    names = [t.strip() for group in topics for t in group.split(",") if t.strip()]
    probe = None if no_check else probe_feed(url, config.settings)
    try:
        message = add_to_config(
            directory, url, name=name, topics=names, interval=interval, probe=probe
        )
    except ConfigError as e:
        _fail_config(e)
        return
    click.echo(message)


@feeds.command("remove")
@click.argument("url_or_name")
@click.pass_obj
def feeds_remove(obj: Context, url_or_name: str) -> None:
    """Remove a feed (by URL or name) from feeds.toml, keeping the rest of the file as it is."""
    from aggregator.feeds_admin import remove_from_config

    try:
        click.echo(remove_from_config(_editable_config_dir(obj), url_or_name))
    except ConfigError as e:
        _fail_config(e)


@feeds.command("import-opml")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def feeds_import_opml(obj: Context, file: Path) -> None:
    """Append the feeds of an OPML file that feeds.toml does not have yet."""
    from aggregator.feeds_admin import import_opml_file

    try:
        click.echo(import_opml_file(_editable_config_dir(obj), file))
    except ConfigError as e:
        _fail_config(e)


@feeds.command("export-opml")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout."
)
@click.pass_obj
def feeds_export_opml(obj: Context, output: Path | None) -> None:
    """Write the configured feeds as OPML 2.0."""
    from aggregator.feeds_file import export_opml

    text = export_opml(obj.load().feeds)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


@feeds.command("status")
@click.pass_obj
def feeds_status(obj: Context) -> None:
    """Each feed's state, last success, last error, consecutive errors, next fetch, items per
    day and average latency."""
    from datetime import UTC, datetime

    from aggregator.feeds_admin import feed_health, render_status
    from aggregator.store import Store

    config = obj.load()
    try:
        store = Store.open(obj.db_path(config))
    except AggregatorError as e:
        raise click.ClickException(str(e)) from e
    try:
        now = datetime.now(UTC)
        click.echo(render_status(feed_health(store, now), now))
    finally:
        store.close()


# -- topic rules: eval, explain, backtest (the logic lives in aggregator/evaluation.py) ---------


def _topics_from(obj: Context, topics_file: Path | None) -> tuple[Config | None, list[TopicConfig]]:
    """The configured topics, or those of a candidate ``topics.toml`` (exit 2 if invalid)."""
    from aggregator.config import parse_config

    if topics_file is None:
        config = obj.load()
        return config, list(config.topics)
    try:
        text = topics_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read {topics_file}: {e}") from e
    try:
        topics = parse_config({"topics.toml": text}).topics
    except ConfigError as e:
        named = [p.replace("topics.toml", str(topics_file), 1) for p in e.problems]
        _fail_config(ConfigError(named))
        raise  # unreachable: _fail_config exits
    return None, list(topics)


def _matcher(topics: list[TopicConfig]) -> TopicMatcher:
    from aggregator.match import TopicMatcher

    return TopicMatcher.compile(topics)


@main.command("eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--topics",
    "topics_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Score a candidate topics.toml instead of the configured one.",
)
@click.pass_obj
def eval_command(obj: Context, file: Path, as_json: bool, topics_file: Path | None) -> None:
    """Score the topics against labelled items (JSON lines, the format of dev.jsonl).

    Prints precision, recall, F1 and tp/fp/fn/tn per topic, and the false positives and false
    negatives. A topic listed in an item's "unsure" is left out of that topic's score.
    """
    import json

    from aggregator.evaluation import format_scores, read_labelled, score, scores_json

    _, topics = _topics_from(obj, topics_file)
    try:
        items = read_labelled(file)
    except AggregatorError as e:
        click.echo(f"eval: {e}", err=True)
        sys.exit(2)
    scores = score(items, _matcher(topics))
    if as_json:
        click.echo(json.dumps(scores_json(scores), indent=2))
    else:
        click.echo(format_scores(scores))


@main.command()
@click.argument("entry", required=False, metavar="[ENTRY_ID|URL]")
@click.option("--title", default="", help="The item's title.")
@click.option("--summary", default="", help="The item's summary or text.")
@click.option("--source", default="", help="The item's source (feed name).")
@click.option("--link", default="", help="The item's link.")
@click.option(
    "--topics",
    "topics_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Explain with a candidate topics.toml instead of the configured one.",
)
@click.pass_obj
def explain(
    obj: Context,
    entry: str | None,
    title: str,
    summary: str,
    source: str,
    link: str,
    topics_file: Path | None,
) -> None:
    """Show each topic's verdict for one item, and why.

    Give the item as --title/--summary/--source, or name a stored entry by its id or by a URL
    already in the database. Matched words are highlighted; each clause is shown with the query
    comment that says what it is for; an exclusion that vetoed the item is named.
    """
    from aggregator.evaluation import format_explain
    from aggregator.models import Document

    config, topics = _topics_from(obj, topics_file)
    notes: list[str] = []
    if entry:
        from aggregator.dedupe import canonical_url
        from aggregator.store import Store, stored_entry

        config = config or obj.load()
        if not Path(obj.db_path(config)).exists():
            raise click.ClickException(f"no database at {obj.db_path(config)}")
        try:
            store = Store.open(obj.db_path(config))
        except AggregatorError as e:
            raise click.ClickException(str(e)) from e
        try:
            found = stored_entry(store, entry, [canonical_url(entry)] if "://" in entry else [])
            if found is not None:
                notes.append(_story_note(store, found[0], found[1], config))
        finally:
            store.close()
        if found is None:
            raise click.ClickException(f"no stored entry with id or URL {entry!r}")
        entry_id, stored = found
        doc = Document(stored.title, stored.summary, stored.source, stored.link)
        click.echo(f"entry {entry_id} from {stored.feed_url}")
        feed = config.feed(stored.feed_url)
        if feed is not None and feed.topics:
            notes.append(
                f"every item of this feed also belongs to: {', '.join(feed.topics)} "
                "(feeds.toml `topics`), whatever the rules say"
            )
    elif title or summary:
        doc = Document(title, summary, source, link)
    else:
        raise click.UsageError("give --title and/or --summary, or a stored entry id or URL")

    def mark(word: str) -> str:
        return click.style(f"[{word}]", fg="yellow", bold=True)

    click.echo(format_explain(_matcher(topics).explain(doc), mark=mark), nl=False)
    for note in notes:
        click.echo(f"note: {note}")


def _story_note(store: Store, entry_id: int, entry: Entry, config: Config) -> str:
    """Which story a stored entry is in, and the grouping decision that put it there."""
    from aggregator.store import story_context
    from aggregator.story_index import replay_decision

    window = timedelta(seconds=config.settings.story_window)
    story_id, first_seen, earlier = story_context(store, entry_id, window)
    if story_id is None:
        return "in no story: it matched no topic, and no earlier entry with its link is in one"
    if entry.canonical_url and any(e.canonical_url == entry.canonical_url for _, e in earlier):
        return f"story {story_id}: an earlier entry has the same link ({entry.canonical_url})"
    return f"story {story_id}: {replay_decision(entry, earlier, first_seen, window).explain()}"


@main.command()
@click.option(
    "--topics",
    "topics_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A candidate topics.toml to try (default: the configured topics).",
)
@click.option(
    "--against",
    "against_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The live topics.toml to compare with: show what the candidate gains and loses.",
)
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Items from a CSV (id,source,published,title,summary,link) instead of stored history.",
)
@click.option(
    "--since",
    metavar="DURATION",
    help="Only items published in this window, e.g. 30d or 12h (stored history: default 30d).",
)
@click.option("--samples", default=5, show_default=True, help="Sample hits to show per topic.")
@click.pass_obj
def backtest(
    obj: Context,
    topics_file: Path | None,
    against_file: Path | None,
    csv_file: Path | None,
    since: str | None,
    samples: int,
) -> None:
    """Run topic rules over past items: matches per day, sample hits, and gains and losses.

    Try a change before saving it: aggregator backtest --topics new.toml --against
    config/topics.toml --csv ../shared/corpus/news-items.csv
    """
    from datetime import UTC, datetime, timedelta

    from aggregator.config import parse_duration
    from aggregator.evaluation import Item, format_backtest, read_items_csv
    from aggregator.evaluation import backtest as run_backtest

    config, topics = _topics_from(obj, topics_file)
    against = _matcher(_topics_from(obj, against_file)[1]) if against_file else None
    window = since if since is not None else (None if csv_file else "30d")
    start = None
    if window:
        try:
            start = datetime.now(UTC) - timedelta(seconds=parse_duration(window))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--since") from e
    store = None
    try:
        if csv_file:
            items = list(read_items_csv(csv_file))
            label = f"{csv_file}"
            total = len(items)
            source: Iterable[Item] = items
        else:
            from aggregator.store import Store, count_stored_entries, stored_entries

            config = config or obj.load()
            if not Path(obj.db_path(config)).exists():
                raise click.ClickException(
                    f"no database at {obj.db_path(config)}: run the service first, or use --csv"
                )
            store = Store.open(obj.db_path(config))
            total = count_stored_entries(store, start)
            label = f"stored history ({obj.db_path(config)})"
            source = (
                Item(str(i), e.title, e.summary, e.source, e.link, e.published)
                for i, e in stored_entries(store, start)
            )
        bar_label = f"matching {total} items"
        with click.progressbar(length=total, label=bar_label, file=sys.stderr) as bar:
            result = run_backtest(
                source,
                _matcher(topics),
                against=against,
                since=start,
                samples=samples,
                progress=bar.update,
            )
    except AggregatorError as e:
        raise click.ClickException(str(e)) from e
    finally:
        if store is not None:
            store.close()
    click.echo(f"source: {label}" + (f", since {start:%Y-%m-%d %H:%M} UTC" if start else ""))
    click.echo(format_backtest(result))


@main.command("eval-stories")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option(
    "--window", default="72h", show_default=True, metavar="DURATION", help="The story window."
)
def eval_stories(file: Path, as_json: bool, window: str) -> None:
    """Group labelled items (JSON Lines) with the real story grouping and score it.

    Each line is {"id", "source", "published", "title", "summary", "link", "story"}; items that
    share "story" report the same occurrence. Prints pairwise precision, recall and F1 of the
    "same story" decision, and B-cubed F1. Exit 2: the file or the window is invalid.
    """
    from aggregator.config import parse_duration
    from aggregator.story_eval import StoryDataError, eval_stories_output

    try:
        hours = parse_duration(window) / 3600
        click.echo(eval_stories_output(file, as_json=as_json, window_hours=hours))
    except (StoryDataError, ValueError) as e:
        click.echo(f"eval-stories: {e}", err=True)
        sys.exit(2)


# -- delivery operations (aggregator/notify/ops.py) -----------------------------------------------


@main.group(invoke_without_command=True)
@click.pass_context
def outbox(ctx: click.Context) -> None:
    """List alerts waiting to be sent (pending, failed, held) or dead, with their reasons."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import UTC, datetime

    from aggregator.notify.ops import outbox_report
    from aggregator.store import Store

    obj: Context = ctx.obj
    store = Store.open(obj.db_path(obj.load()))
    try:
        click.echo(outbox_report(store, datetime.now(UTC)))
    finally:
        store.close()


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--dead", is_flag=True, help="Re-queue every dead alert.")
@click.pass_obj
def outbox_retry(obj: Context, ids: tuple[int, ...], dead: bool) -> None:
    """Re-queue alerts by id (failed, held or dead), or every dead one with --dead."""
    from datetime import UTC, datetime

    from aggregator.notify.ops import retry
    from aggregator.store import Store

    if not ids and not dead:
        raise click.UsageError("give alert ids, or --dead")
    store = Store.open(obj.db_path(obj.load()))
    try:
        click.echo(retry(store, datetime.now(UTC), ids, dead=dead))
    finally:
        store.close()


@main.group()
def slack() -> None:
    """Check the Slack connection."""


@slack.command("test")
@click.pass_obj
def slack_test_command(obj: Context) -> None:
    """Post a test message to each configured channel and report what Slack answered."""
    from datetime import UTC, datetime

    from aggregator.notify import make_sink
    from aggregator.notify.ops import format_checks, slack_test

    config = obj.load()
    token = slack_token(os.environ)
    if not token:
        click.echo(
            "no Slack token: set SLACK_BOT_TOKEN (or slack-bot-token in "
            "$CREDENTIALS_DIRECTORY); the console sink would print instead",
            err=True,
        )
        sys.exit(1)
    sink = make_sink(config.settings, token)
    checks = slack_test(
        sink, config.topics, datetime.now(UTC), ops_channel=config.settings.ops_channel
    )
    click.echo(format_checks(checks))
    if not all(c.ok for c in checks):
        sys.exit(1)


@main.command()
@click.pass_obj
def doctor(obj: Context) -> None:
    """Check the config, database, Slack token and scopes, channels and feeds, in plain words.

    Each failed check says how to fix it. Nothing is changed and nothing is posted. Exit 0 when
    every check passes, 1 otherwise.
    """
    from aggregator.doctor import format_report, run_checks

    checks = run_checks(obj.config_dir, os.environ, db_path=obj.db)
    click.echo(format_report(checks))
    if not all(c.ok for c in checks):
        sys.exit(1)
