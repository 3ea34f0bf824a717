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
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator import __version__
from aggregator.config.load import resolve_config_dir, slack_token
from aggregator.config.model import Config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.service.logs import setup_logging

if TYPE_CHECKING:  # the commands import what they need when they run, to start fast
    pass

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
        from aggregator.config.load import load_config

        try:
            return load_config(self.config_dir, os.environ)
        except ConfigError as e:
            fail_config(e)
            raise  # unreachable: _fail_config exits

    def db_path(self, config: Config) -> str:
        return self.db or config.settings.database


def shown(text: str) -> str:
    """``text`` fit to print: no Slack token, nor anything shaped like one (stored reasons may
    predate the sink's own redaction)."""
    from aggregator.redact import Redactor

    return Redactor([slack_token(os.environ)])(text)


def fail_config(error: ConfigError, code: int = 2) -> None:
    click.echo(f"config is invalid ({len(error.problems)} problem(s)):", err=True)
    for problem in error.problems:
        click.echo(f"  {problem}", err=True)
    sys.exit(code)


class Commands(click.Group):
    """The command group. An expected failure (the project's own error: a database that cannot
    be written, a model file that is damaged, a store error) ends in one readable line and exit
    1, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            fail_config(e)
            raise  # unreachable: fail_config exits
        except AggregatorError as e:
            raise click.ClickException(shown(" ".join(str(e).split()))) from e


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
    from aggregator.service.serve import serve

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
    from aggregator.service.runtime import Runtime

    try:
        runtime = Runtime(obj.config_dir, os.environ, db_path=obj.db)
    except ConfigError as e:
        fail_config(e)
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
    from aggregator.relevance.tiers import load_models, stale_models
    from aggregator.rules.matcher import check_examples

    config = obj.load()
    problems = check_examples(config.topics)
    if problems:
        fail_config(ConfigError(problems))
    try:
        scoring = load_models(config.topics)
    except ConfigError as e:
        fail_config(e)
        return
    for note in stale_models(config.topics, scoring):
        click.echo(f"note: {note}", err=True)
    models = ", ".join(
        f"{name} (alert {s.alert:.2f}, review {s.review:.2f})"
        for name, s in scoring.scorers.items()
    )
    click.echo(
        f"config OK: {obj.config_dir}: {len(config.feeds)} feeds, {len(config.topics)} topics "
        f"({', '.join(t.name for t in config.topics)}); examples pass"
        + (f"; models: {models}" if models else "")
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
    from aggregator.admin.demo import run_demo

    config_dir = obj.config_dir
    try:
        run_demo(config_dir, feeds_dir=feeds_dir, echo=click.echo)
    except ConfigError as e:
        fail_config(e)
