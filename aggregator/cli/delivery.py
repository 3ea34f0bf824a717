"""Delivery and health commands: ``outbox``, ``outbox retry``, ``slack test`` and ``doctor``.

The logic lives in :mod:`aggregator.notify.ops` and :mod:`aggregator.admin.doctor`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from aggregator.cli.main import Context, main, shown
from aggregator.config.load import slack_token

if TYPE_CHECKING:  # the commands import what they need when they run, to start fast
    pass


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
        click.echo(shown(outbox_report(store, datetime.now(UTC))))
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
    click.echo(shown(format_checks(checks)))
    if not all(c.ok for c in checks):
        sys.exit(1)


@main.command()
@click.pass_obj
def doctor(obj: Context) -> None:
    """Check the config, database, Slack token and scopes, channels and feeds, in plain words.

    Each failed check says how to fix it. Nothing is changed and nothing is posted. Exit 0 when
    every check passes, 1 otherwise.
    """
    from aggregator.admin.doctor import format_report, run_checks

    checks = run_checks(obj.config_dir, os.environ, db_path=obj.db)
    click.echo(shown(format_report(checks)))
    if not all(c.ok for c in checks):
        sys.exit(1)
