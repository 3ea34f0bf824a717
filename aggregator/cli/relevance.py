"""Commands for the relevance models: ``label`` (a team's own labels) and ``train``.

Training imports scikit-learn, numpy and scipy; only the ``train`` command does, when it runs.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aggregator.cli.main import Context, main
from aggregator.errors import AggregatorError

if TYPE_CHECKING:  # the commands import what they need when they run, to start fast
    from aggregator.config.model import Config, TopicConfig
    from aggregator.relevance.train import CrossValidation, LabelledItem, TrainResult

LABELS = {"yes": 1, "no": 0, "unsure": None}
SHOWN = {1: "relevant", 0: "not relevant", None: "unsure"}


def _bad_input(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _topic(config: Config, name: str) -> TopicConfig:
    for topic in config.topics:
        if topic.name == name:
            return topic
    known = ", ".join(t.name for t in config.topics) or "none"
    _bad_input(f"no topic {name!r} in topics.toml (topics: {known})")
    raise AssertionError  # unreachable: _bad_input exits


@main.command()
@click.argument("entry", metavar="ENTRY_ID")
@click.argument("topic")
@click.argument("label", type=click.Choice(list(LABELS)))
@click.pass_obj
def label(obj: Context, entry: str, topic: str, label: str) -> None:
    """Label a stored entry for a topic: yes (relevant), no, or unsure.

    Your label replaces the one you gave it before; `aggregator train TOPIC` learns from these
    labels. ENTRY_ID is the number `aggregator explain` shows, or a URL already in the
    database. Exit 2: no such topic, entry or database.
    """
    from aggregator.ingest.dedupe import canonical_url
    from aggregator.store import Store
    from aggregator.store.labels import LabelSource

    config = obj.load()
    _topic(config, topic)
    db_path = obj.db_path(config)
    if not Path(db_path).exists():
        _bad_input(f"no database at {db_path}: nothing to label yet")
    try:
        store = Store.open(db_path)
        try:
            found = store.entries.find(entry, [canonical_url(entry)] if "://" in entry else [])
            if found is None:
                _bad_input(f"no stored entry with id or URL {entry!r} in {db_path}")
                return
            value = LABELS[label]
            store.labels.set(found.id, topic, value, LabelSource.CLI, "cli", datetime.now(UTC))
            [resolved] = store.labels.resolved(topic, [found.id])
        finally:
            store.close()
    except AggregatorError as e:
        raise click.ClickException(str(e)) from e
    votes = resolved.relevant + resolved.not_relevant + resolved.unsure
    click.echo(
        f"entry {found.id} ({found.entry.title!r}) labelled {SHOWN[value]} for {topic}; "
        f"its label from {votes} vote(s): {SHOWN[resolved.label]}"
    )


@main.command()
@click.argument("topic")
@click.option(
    "--labels",
    "label_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labelled items sampled as the feeds bring them (JSON lines, the format of dev.jsonl). "
    "Repeatable.",
)
@click.option(
    "--curated",
    "curated_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labelled items picked by hand, denser in clear cases (like dev.jsonl): trained on, "
    "but the thresholds are chosen on sampled items when there are enough. Repeatable.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the model (default: models/TOPIC.json in the config directory).",
)
@click.option("--force", is_flag=True, help="Replace the current model even if it does better.")
@click.option("--no-database", is_flag=True, help="Leave out the labels stored in the database.")
@click.option(
    "--clause-weight",
    type=click.FloatRange(min=0.0),
    help="Advanced: the value of a clause feature (0: none). Default: the current model's, else 1.",
)
@click.option(
    "--title-chars/--no-title-chars",
    default=None,
    help="Advanced: also learn from the character 4-grams of the title's words, so that word "
    "forms share evidence. Default: the current model's, else off.",
)
@click.option(
    "--ensemble/--no-ensemble",
    default=None,
    help="Advanced: average the model (words and clause features) with a second one on words "
    "alone. Default: the current model's, else off.",
)
@click.option(
    "--sampled-weight",
    type=click.FloatRange(min=0.0, min_open=True),
    help="Advanced: how much more a sampled item (--labels, the database's) weighs in training "
    "than a curated one (--curated). Default: the current model's, else 1.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_obj
def train(
    obj: Context,
    topic: str,
    label_files: tuple[Path, ...],
    curated_files: tuple[Path, ...],
    out: Path | None,
    force: bool,
    no_database: bool,
    clause_weight: float | None,
    title_chars: bool | None,
    ensemble: bool | None,
    sampled_weight: float | None,
    as_json: bool,
) -> None:
    """Train TOPIC's relevance model from labelled files and the database's labels.

    Reports 5-fold cross-validated precision, recall and F1 of what would alert (the rule AND
    the score), with and without the database's labels, over 5 partitions of the items pooled;
    chooses the alert and review thresholds from them; and writes the model unless the current
    one does better on held-out items.
    Progress goes to stderr. Exit 0: written; 1: refused as worse; 2: bad input.
    """
    from aggregator.config.load import DEFAULTS_DIR
    from aggregator.errors import ModelError, TrainingDataError
    from aggregator.relevance.model import default_model_path

    config = obj.load()
    rules = _topic(config, topic)
    if out is None:
        if obj.config_dir.resolve() == DEFAULTS_DIR.resolve():
            _bad_input("the config in use is the embedded default: give --out PATH or --config DIR")
        out = default_model_path(obj.config_dir, topic)
    items, notes = _file_items(topic, label_files, curated_files)
    if not no_database:
        items += _database_items(obj, config, topic, notes)
    for note in notes:
        click.echo(note, err=True)
    if not items:
        _bad_input(f"no labelled items for {topic!r}: give --labels FILE, or label entries")

    from aggregator.relevance.train import train_topic

    given = {
        "clause_weight": clause_weight,
        "title_chars": title_chars,
        "ensemble_words": ensemble,
        "sampled_weight": sampled_weight,
    }
    try:
        result = train_topic(
            rules, items, out, settings={k: v for k, v in given.items() if v is not None},
            force=force,
            progress=lambda line: click.echo(f"  {line}", err=True),
        )  # fmt: skip
    except (TrainingDataError, ModelError) as e:
        _bad_input(str(e))
        return
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e}") from e
    if as_json:
        click.echo(json.dumps(_result_json(result), indent=2))
    else:
        click.echo(_result_text(result))
    if result.written:
        _note_overrides(rules, out)
    sys.exit(0 if result.written else 1)


def _note_overrides(rules: TopicConfig, model_path: Path) -> None:
    """Say when topics.toml sets a threshold other than the one the new model chose."""
    from aggregator.relevance.model import RelevanceModel

    chosen = RelevanceModel.load(model_path, rules.name).thresholds
    for key, set_to, own in (
        ("alert_threshold", rules.alert_threshold, chosen.alert),
        ("review_threshold", rules.review_threshold, chosen.review),
    ):
        if set_to is not None and set_to != own:
            click.echo(
                f"note: topics.toml sets {key} = {set_to} for {rules.name}, which overrides the "
                f"new model's {own}: set it to {own} or remove it",
                err=True,
            )


def _file_items(
    topic: str, label_files: tuple[Path, ...], curated_files: tuple[Path, ...]
) -> tuple[list[LabelledItem], list[str]]:
    from aggregator.measure.topics import read_labelled
    from aggregator.relevance.thresholds import CURATED, SAMPLED
    from aggregator.relevance.train import LabelledItem

    items: list[LabelledItem] = []
    notes: list[str] = []
    # a fixed order (curated, sampled, then the database's), for the same folds every time
    for paths, origin in ((curated_files, CURATED), (label_files, SAMPLED)):
        for path in paths:
            try:
                found = read_labelled(path)
            except AggregatorError as e:
                _bad_input(str(e))
                raise  # unreachable: _bad_input exits
            usable = [i for i in found if topic in i.labels]
            items += [
                LabelledItem(i.id, i.document(), i.labels[topic], topic in i.unsure, origin)
                for i in usable
            ]
            skipped = len(found) - len(usable)
            notes.append(
                f"{path}: {len(usable)} items labelled for {topic}"
                + (f" ({skipped} without a label for it, left out)" if skipped else "")
            )
    return items, notes


def _database_items(
    obj: Context, config: Config, topic: str, notes: list[str]
) -> list[LabelledItem]:
    from aggregator.models import Document
    from aggregator.relevance.thresholds import TEAM
    from aggregator.relevance.train import LabelledItem
    from aggregator.store import Store

    db_path = obj.db_path(config)
    if not Path(db_path).exists():
        notes.append(f"no database at {db_path}: no team labels")
        return []
    try:
        store = Store.open(db_path)
        try:
            labelled = store.labels.training(topic)
        finally:
            store.close()
    except AggregatorError as e:
        raise click.ClickException(str(e)) from e
    sure = [x for x in labelled if x.resolved.label is not None]
    notes.append(
        f"{db_path}: {len(sure)} entries labelled for {topic}"
        + (f" ({len(labelled) - len(sure)} unsure, left out)" if len(sure) < len(labelled) else "")
    )
    return [
        LabelledItem(
            f"entry:{x.resolved.entry_id}",
            Document(x.entry.title, x.entry.summary, x.entry.source, x.entry.link),
            int(x.resolved.label or 0),
            origin=TEAM,
        )
        for x in sure
    ]


def _cv_json(cv: CrossValidation | None, origins: frozenset[str] | None = None) -> Any:
    return None if cv is None else cv.as_dict(origins)


def _result_json(result: TrainResult) -> dict[str, Any]:
    from aggregator.relevance.thresholds import CURATED, SAMPLED

    files = frozenset({SAMPLED, CURATED})
    return {
        "topic": result.topic,
        "written": result.written,
        "path": str(result.path),
        "verdict": result.verdict,
        "thresholds": {"alert": result.cv.alert, "review": result.cv.review},
        "cv": _cv_json(result.cv),
        "cv_without_database": _cv_json(result.cv_without_team),
        "cv_on_file_items": _cv_json(result.cv, files) if result.cv_without_team else None,
        "terms": result.terms,
        "bytes": result.size,
        "seconds": round(result.seconds, 1),
    }


def _result_text(result: TrainResult) -> str:
    from aggregator.relevance.thresholds import CURATED, SAMPLED, TEAM

    cv = result.cv
    lines = [
        f"{result.topic}: 5-fold cross-validation over {len(cv.examples)} items, "
        f"{len(cv.runs)} partitions pooled (counts summed over them); alert threshold "
        f"{cv.alert:.2f}, review threshold {cv.review:.2f}",
        f"  alerts (rule and score >= {cv.alert:.2f}):  {cv.at(cv.alert).line()}",
        f"  alerts or review (>= {cv.review:.2f}):      {cv.at(cv.review).line()}",
        f"  rule alone:                       {cv.rules_alone().line()}",
    ]
    sampled = frozenset({SAMPLED, TEAM})
    if any(ex.origin in sampled for ex in cv.examples):
        lines.append(f"  alerts, sampled items only:       {cv.at(cv.alert, sampled).line()}")
    curated = frozenset({CURATED})
    if any(ex.origin == CURATED for ex in cv.examples):
        lines.append(f"  alerts, curated items only:       {cv.at(cv.alert, curated).line()}")
    if result.cv_without_team is not None:
        without = result.cv_without_team
        files = frozenset({SAMPLED, CURATED})
        lines += [
            "  the database's labels changed the alerts' figures on the files' items from",
            f"    {without.at(without.alert).line()} (alert {without.alert:.2f}, without them) to",
            f"    {cv.at(cv.alert, files).line()} (alert {cv.alert:.2f}, with them)",
        ]
    lines.append(f"{result.verdict}")
    if result.written:
        lines.append(
            f"wrote {result.path} ({result.size / 1e6:.2f} MB, {result.terms} terms) in "
            f"{result.seconds:.1f} s"
        )
    return "\n".join(lines)
