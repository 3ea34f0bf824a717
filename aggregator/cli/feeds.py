"""``aggregator feeds ...``: list, add, remove, import and export feeds, and their health.

The logic lives in :mod:`aggregator.admin.feeds`; these commands only wire it to click.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator.cli.main import Context, fail_config, main
from aggregator.errors import AggregatorError, ConfigError

if TYPE_CHECKING:  # the commands import what they need when they run, to start fast
    pass


@main.group()
def feeds() -> None:
    """List, add, remove, import and export feeds, and show their health."""


def _editable_config_dir(obj: Context) -> Path:
    from aggregator.config.load import DEFAULTS_DIR

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
    from aggregator.admin.feeds import render_list

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
    from aggregator.admin.feeds import add_to_config, probe_feed

    directory = _editable_config_dir(obj)
    config = obj.load()
    names = [t.strip() for group in topics for t in group.split(",") if t.strip()]
    probe = None if no_check else probe_feed(url, config.settings)
    try:
        message = add_to_config(
            directory, url, name=name, topics=names, interval=interval, probe=probe
        )
    except ConfigError as e:
        fail_config(e)
        return
    click.echo(message)


@feeds.command("remove")
@click.argument("url_or_name")
@click.pass_obj
def feeds_remove(obj: Context, url_or_name: str) -> None:
    """Remove a feed (by URL or name) from feeds.toml, keeping the rest of the file as it is."""
    from aggregator.admin.feeds import remove_from_config

    try:
        click.echo(remove_from_config(_editable_config_dir(obj), url_or_name))
    except ConfigError as e:
        fail_config(e)


@feeds.command("import-opml")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def feeds_import_opml(obj: Context, file: Path) -> None:
    """Append the feeds of an OPML file that feeds.toml does not have yet.

    Progress goes to stderr; the list of what was added and skipped (and why) to stdout.
    """
    from aggregator.admin.feeds import import_opml_file

    def progress(step: str) -> None:
        click.echo(step, err=True)

    try:
        click.echo(import_opml_file(_editable_config_dir(obj), file, progress=progress))
    except ConfigError as e:
        fail_config(e)


@feeds.command("export-opml")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout."
)
@click.pass_obj
def feeds_export_opml(obj: Context, output: Path | None) -> None:
    """Write the configured feeds as OPML 2.0."""
    from aggregator.config.feeds_file import export_opml

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

    from aggregator.admin.feeds import feed_health, render_status
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
