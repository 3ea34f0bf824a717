"""Reactions in Slack reach ``aggregator train``: the team's labels change the cross-validated
figures, and train says by how much. Real delivery to the Slack stand-in, real reactions, a real
read, then ``train`` as a subprocess."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.feedback.read import read_reactions
from tests.feedback_world import FEEDBACK, FakeClock, World
from tests.slackserver import SlackServer
from tests.test_cli_relevance import HARD_WORDS, TOPICS, run, write_hard_labels


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC) - timedelta(hours=2))


@pytest.fixture
def world(tmp_path: Path, clock: FakeClock) -> Iterator[World]:
    with SlackServer(clock=lambda: clock.now.timestamp()) as slack:
        w = World(tmp_path, slack, clock)
        yield w
        w.close()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "topics.toml").write_text(TOPICS, encoding="utf-8")
    (directory / "aggregator.toml").write_text("", encoding="utf-8")
    (directory / "feeds.toml").write_text('[[feeds]]\nurl = "https://feeds.example/a.xml"\n')
    return directory


@pytest.fixture
def hard_file(tmp_path: Path) -> Path:
    """Labelled items where only a rare word tells the label: one of each pair is held out in
    cross-validation, so a model that never saw the word misses it."""
    return write_hard_labels(tmp_path / "hard.jsonl")


def test_reactions_reach_train_and_change_its_figures(
    world: World, config_dir: Path, hard_file: Path
) -> None:
    # The team marks alerts that carry the same rare words: relevant (+1) or not (-1).
    for k, word in enumerate(HARD_WORDS):
        for place in ("Nevada", "Tahoe"):
            sent = world.alert(f"Trump order about {word} in {place}", "eo", channel="#eo")
            world.react(sent, "+1" if k % 2 else "-1", "U1", "U2")
    disputed = world.alert("Trump order about zulu in Nevada", "eo", channel="#eo")
    world.react(disputed, "+1", "U1")
    world.react(disputed, "-1", "U2")  # a tie: unsure, left out of training
    clock = world.clock
    report = read_reactions(world.store, world.sink, FEEDBACK, clock.now,
                            monotonic=clock.monotonic, wait=clock.wait)  # fmt: skip
    assert report.complete and report.changed == 50

    base = ("--config", config_dir, "--db", world.path, "train", "eo", "--labels", hard_file)
    result = run(*base, "--out", config_dir / "with.json", "--json")
    assert result.returncode == 0, result.stderr
    assert f"{world.path}: 24 entries labelled for eo (1 unsure, left out)" in result.stderr
    with_team = json.loads(result.stdout)
    without = json.loads(run(*base, "--out", config_dir / "without.json", "--json",
                             "--no-database").stdout)  # fmt: skip
    assert with_team["cv"]["items"] == 96 + 24
    assert with_team["cv_without_database"]["items"] == without["cv"]["items"] == 96
    # on the same 96 file items, the team's labels changed what the model gets right
    on_files, alone = with_team["cv_on_file_items"]["alert"], with_team["cv_without_database"]
    assert on_files != alone["alert"], (on_files, alone["alert"])
    assert alone["alert"] == without["cv"]["alert"]
    text = run(*base, "--out", config_dir / "text.json")
    assert "the database's labels changed the alerts' figures on the files' items from" in (
        text.stdout
    )
