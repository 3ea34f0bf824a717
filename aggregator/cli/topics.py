"""Commands for topic rules: ``eval``, ``explain``, ``backtest`` and ``eval-stories``.

The logic lives in :mod:`aggregator.measure`; these commands only wire it to click.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator.cli.main import Context, fail_config, main
from aggregator.config.model import Config
from aggregator.errors import AggregatorError, ConfigError

if TYPE_CHECKING:  # the commands import what they need when they run, to start fast
    from collections.abc import Iterable

    from aggregator.config.model import TopicConfig
    from aggregator.measure.topics import Item
    from aggregator.models import Entry
    from aggregator.relevance.tiers import Scoring
    from aggregator.rules.matcher import TopicMatcher
    from aggregator.store import Store


def _topics_from(obj: Context, topics_file: Path | None) -> tuple[Config | None, list[TopicConfig]]:
    """The configured topics, or those of a candidate ``topics.toml`` (exit 2 if invalid)."""
    from aggregator.config.load import parse_config

    if topics_file is None:
        config = obj.load()
        return config, list(config.topics)
    try:
        text = topics_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read {topics_file}: {e}") from e
    try:
        # a candidate's models are found beside it, as the live ones beside config/topics.toml
        topics = parse_config({"topics.toml": text}, directory=topics_file.parent).topics
    except ConfigError as e:
        named = [p.replace("topics.toml", str(topics_file), 1) for p in e.problems]
        fail_config(ConfigError(named))
        raise  # unreachable: _fail_config exits
    return None, list(topics)


def _matcher(topics: list[TopicConfig]) -> TopicMatcher:
    from aggregator.rules.matcher import TopicMatcher

    return TopicMatcher.compile(topics)


def _scoring(topics: list[TopicConfig]) -> Scoring:
    """The topics' models, loaded (exit 2 naming the topic when one cannot be used)."""
    from aggregator.relevance.tiers import load_models

    try:
        return load_models(topics)
    except ConfigError as e:
        fail_config(e)
        raise  # unreachable: fail_config exits


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

    from aggregator.measure.topics import format_scores, read_labelled, score, scores_json

    _, topics = _topics_from(obj, topics_file)
    try:
        items = read_labelled(file)
    except AggregatorError as e:
        click.echo(f"eval: {e}", err=True)
        sys.exit(2)
    scores = score(items, _matcher(topics), _scoring(topics))
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
    from aggregator.measure.explain import explain_scores, format_explain
    from aggregator.models import Document

    config, topics = _topics_from(obj, topics_file)
    notes: list[str] = []
    if entry:
        from aggregator.ingest.dedupe import canonical_url
        from aggregator.store import Store

        config = config or obj.load()
        if not Path(obj.db_path(config)).exists():
            raise click.ClickException(f"no database at {obj.db_path(config)}")
        try:
            store = Store.open(obj.db_path(config))
        except AggregatorError as e:
            raise click.ClickException(str(e)) from e
        try:
            found = store.entries.find(entry, [canonical_url(entry)] if "://" in entry else [])
            if found is not None:
                notes.append(_story_note(store, found.id, found.entry, config))
        finally:
            store.close()
        if found is None:
            raise click.ClickException(f"no stored entry with id or URL {entry!r}")
        stored = found.entry
        doc = Document(stored.title, stored.summary, stored.source, stored.link)
        click.echo(f"entry {found.id} from {stored.feed_url}")
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

    matcher = _matcher(topics)
    scores = explain_scores(doc, matcher.match(doc), _scoring(topics))
    click.echo(format_explain(matcher.explain(doc), mark=mark, scores=scores), nl=False)
    for note in notes:
        click.echo(f"note: {note}")


def _story_note(store: Store, entry_id: int, entry: Entry, config: Config) -> str:
    """Which story a stored entry is in, and the grouping decision that put it there."""
    from aggregator.stories.decide import replay_decision

    window = timedelta(seconds=config.settings.story_window)
    story_id, first_seen, earlier = store.entries.story_context(entry_id, window)
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

    from aggregator.config.values import parse_duration
    from aggregator.measure.topics import Item, format_backtest, read_items_csv
    from aggregator.measure.topics import backtest as run_backtest

    config, topics = _topics_from(obj, topics_file)
    against = _matcher(_topics_from(obj, against_file)[1]) if against_file else None
    window = since if since is not None else (None if csv_file else "30d")
    start = None
    if window:
        try:
            start = datetime.now(UTC) - timedelta(seconds=parse_duration(window))
        except OverflowError as e:
            raise click.BadParameter(
                f"{window!r} reaches back too far", param_hint="--since"
            ) from e
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
            from aggregator.store import Store

            config = config or obj.load()
            if not Path(obj.db_path(config)).exists():
                raise click.ClickException(
                    f"no database at {obj.db_path(config)}: run the service first, or use --csv"
                )
            store = Store.open(obj.db_path(config))
            total = store.entries.count_since(start)
            label = f"stored history ({obj.db_path(config)})"
            source = (
                Item(
                    str(s.id),
                    s.entry.title,
                    s.entry.summary,
                    s.entry.source,
                    s.entry.link,
                    s.entry.published,
                )
                for s in store.entries.since(start)
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
    from aggregator.config.values import parse_duration
    from aggregator.measure.stories import StoryDataError, eval_stories_output

    try:
        hours = parse_duration(window) / 3600
        click.echo(eval_stories_output(file, as_json=as_json, window_hours=hours))
    except OverflowError:
        click.echo(f"eval-stories: the window {window!r} is too long", err=True)
        sys.exit(2)
    except (StoryDataError, ValueError) as e:
        click.echo(f"eval-stories: {e}", err=True)
        sys.exit(2)
