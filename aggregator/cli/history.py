"""What the bot saw and did: ``aggregator search`` over past stories."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from aggregator.cli.main import Context, main, shown
from aggregator.errors import RuleSyntaxError


@main.command()
@click.argument("query")
@click.option("--topic", metavar="NAME", help="Only entries that matched NAME or alerted in it.")
@click.option(
    "--since", default="30d", show_default=True, metavar="DURATION", help="How far back to look."
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help='Print {"results": [...]} instead of text.')
@click.pass_obj
def search(
    obj: Context, query: str, topic: str | None, since: str, limit: int, as_json: bool
) -> None:
    """Past entries matching QUERY, newest first, with their source, time, link, story and the
    topics they alerted in.

    QUERY is written as a topic's query in topics.toml, with the same meaning: words, "phrases",
    prefix*, AND, OR, NOT, NEAR/n, ( ), title: and summary: (source: and link: work too, more
    slowly). A mistake is shown with a caret under its column, as check-config does. Exit 2: a bad
    query or option.
    """
    from aggregator.config.values import parse_duration
    from aggregator.measure.search import search as run_search
    from aggregator.store import Store

    try:
        start = datetime.now(UTC) - timedelta(seconds=parse_duration(since))
    except (ValueError, OverflowError) as e:
        raise click.BadParameter(str(e), param_hint="--since") from e
    config = obj.load()
    if topic is not None and topic not in {t.name for t in config.topics}:
        known = ", ".join(t.name for t in config.topics)
        raise click.BadParameter(
            f"unknown topic {topic!r} (topics are: {known})", param_hint="--topic"
        )
    path = obj.db_path(config)
    if not Path(path).exists():
        raise click.ClickException(f"no database at {path}: run the service first")
    store = Store.open(path)
    try:
        results = run_search(store, query, since=start, topic=topic, limit=limit)
    except RuleSyntaxError as e:
        pointer = "\n    ".join(e.pointer().splitlines())
        click.echo(f"search: {e.message} at column {e.column}:\n    {pointer}", err=True)
        sys.exit(2)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"results": [r.as_dict() for r in results]}, indent=2))
        return
    if not results:
        click.echo(f"nothing matched since {start:%Y-%m-%d %H:%M} UTC")
        return
    for r in results:
        item = r.entry
        when = f"{item.published:%Y-%m-%d %H:%M} UTC" if item.published else "undated"
        click.echo(f"{when}  {shown(item.source or item.feed_url)}: {shown(item.title)}")
        if item.link:
            click.echo(f"    {shown(item.link)}")
        story = f"story {r.story_id}" if r.story_id is not None else "in no story"
        alerted = f"alerted in {', '.join(r.alerted)}" if r.alerted else "not alerted"
        click.echo(f"    {alerted} · {story} · entry {r.id}")
