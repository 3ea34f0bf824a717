"""``aggregator feedback``: how the team marked the alerts in Slack, per topic, and why the ones
marked not relevant alerted."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator.cli.main import Context, main, shown

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregator.config.model import Config
    from aggregator.feedback.report import MarkedNotRelevant


@main.command()
@click.option(
    "--since", default="30d", show_default=True, metavar="DURATION",
    help="Alerts sent this recently.",
)  # fmt: skip
@click.option(
    "--refresh", is_flag=True,
    help="First read the reactions from Slack (the alerts of [feedback] window; needs the token).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help='Print {"topics": {...}} instead of text.')
@click.pass_obj
def feedback(obj: Context, since: str, refresh: bool, as_json: bool) -> None:
    """Per topic: alerts sent, marked relevant, marked not relevant, unmarked, and the live
    precision among the marked ones with its 95% interval. Then each alert marked not relevant,
    with the words, clauses and score that made it alert.

    A reaction on an alert in Slack is a label (README: "Teaching the bot from Slack"); the
    service reads them every [feedback] read_every, and --refresh reads them now. Labels given
    with `aggregator label` count too. Exit 2: a bad option, or --refresh without a token.
    """
    from aggregator.config.load import slack_token
    from aggregator.config.values import parse_duration
    from aggregator.feedback.report import as_json as report_json
    from aggregator.feedback.report import format_report, gather
    from aggregator.store import Store

    try:
        start = datetime.now(UTC) - timedelta(seconds=parse_duration(since))
    except (ValueError, OverflowError) as e:
        raise click.BadParameter(str(e), param_hint="--since") from e
    config = obj.load()
    token = slack_token(os.environ)
    if refresh and not token:
        click.echo(
            "error: --refresh reads the reactions from Slack and needs the bot token: set "
            "SLACK_BOT_TOKEN (or slack-bot-token in $CREDENTIALS_DIRECTORY)",
            err=True,
        )
        sys.exit(2)
    path = obj.db_path(config)
    if not Path(path).exists():
        raise click.ClickException(f"no database at {path}: run the service first")
    store = Store.open(path)
    try:
        if refresh:
            from aggregator.feedback.job import refresh as read_now

            assert token is not None
            click.echo("reading reactions from Slack (one call every 2 s)...", err=True)
            report = read_now(config, token, store, datetime.now(UTC))
            click.echo(shown(report.summary()), err=True)
        found = gather(store, start, topics=[t.name for t in config.topics])
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report_json(found), indent=2))
        return
    click.echo(shown(format_report(found, _explainer(config))))


def _explainer(config: Config) -> Callable[[MarkedNotRelevant], str]:
    """Why an alert marked not relevant alerted, by today's rules and models (the short form of
    ``explain``)."""
    from aggregator.errors import ConfigError
    from aggregator.measure.explain import explain_short
    from aggregator.models import Document
    from aggregator.relevance.tiers import NO_SCORING, load_models
    from aggregator.rules.matcher import TopicMatcher

    matcher = TopicMatcher.compile(config.topics)
    try:
        scoring = load_models(config.topics)
    except ConfigError:
        scoring = NO_SCORING  # a damaged model: the words and clauses still say why

    def explain(marked: MarkedNotRelevant) -> str:
        a = marked.alert
        doc = Document(a.title, a.summary, a.source, a.link)
        return explain_short(doc, marked.topic, matcher.explain(doc), scoring, matcher.match(doc))

    return explain
