"""`aggregator label` and `aggregator train`, run as real subprocesses on real files and a real
SQLite database."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.models import Entry
from aggregator.store import Store
from tests.storing import Item, store_items

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)

TOPICS = """
[topics.eo]
channel = "#eo"
query = '''
(  # 1. An order
  order OR orders OR decree
)
AND
(  # 2. By a governor or president
  governor OR president OR Trump
)
OR "executive order"  # 3. the instrument by name
'''
exclude = 'court NEAR/2 order'
"""

RELEVANT = [
    "Governor signs executive order on masks",
    "Trump signs order on tariffs",
    "President issues decree on wages",
    "Governor orders schools closed",
    "Trump order ends remote work",
    "President signs order on voting",
]
NOT_RELEVANT = [
    "Trump orders a cheeseburger",
    "Governor orders pizza for staff",
    "Company opens new store",
    "Restaurant menu adds burger",
    "Stocks fall on tariff fears",
    "President of the club resigns",
]
PLACES = ["Ohio", "Texas", "Maine", "Utah", "Iowa", "Idaho"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from aggregator.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def labelled_lines(places: list[str], prefix: str = "") -> list[str]:
    lines = []
    for place in places:
        for label, titles in ((1, RELEVANT), (0, NOT_RELEVANT)):
            for n, title in enumerate(titles):
                item = {"id": f"{prefix}{place}-{label}-{n}", "title": f"{title} in {place}",
                        "summary": "", "labels": {"eo": label}}  # fmt: skip
                lines.append(json.dumps(item))
    return lines


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "topics.toml").write_text(TOPICS, encoding="utf-8")
    (directory / "aggregator.toml").write_text("", encoding="utf-8")
    (directory / "feeds.toml").write_text(
        '[[feeds]]\nurl = "https://feeds.example/a.xml"\nname = "A"\n', encoding="utf-8"
    )
    return directory


@pytest.fixture
def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(labelled_lines(PLACES)) + "\n", encoding="utf-8")
    return path


HARD_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
              "juliet", "kilo", "lima"]  # fmt: skip


def write_hard_labels(path: Path) -> Path:
    """The labelled items, and pairs of items whose label only a rare word tells: held out, one
    of a pair is often missed, which a model that saw both never misses."""
    lines = labelled_lines(PLACES)
    for k, word in enumerate(HARD_WORDS):
        for place in ("Reno", "Boise"):
            item = {"id": f"hard-{word}-{place}", "title": f"Trump order about {word} in {place}",
                    "labels": {"eo": k % 2}}  # fmt: skip
            lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def hard_labels_file(tmp_path: Path) -> Path:
    return write_hard_labels(tmp_path / "hard.jsonl")


def entry(n: int, title: str) -> Entry:
    return Entry("https://feeds.example/a.xml", f"g{n}", f"https://news.example/{n}",
                 f"https://news.example/{n}", title, "", NOW - timedelta(minutes=n), f"h{n}",
                 "A")  # fmt: skip


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    store = Store.open(path)
    try:
        titles = [f"{t} in Nevada" for t in (*RELEVANT, *NOT_RELEVANT)]
        store_items(store, [Item(entry(n, t)) for n, t in enumerate(titles, start=1)], NOW)
    finally:
        store.close()
    return path


def labels_in(database: Path) -> list[tuple[int, str, int | None, str, str]]:
    store = Store.open(database)
    try:
        return [(x.entry_id, x.topic, x.label, str(x.source), x.who)
                for n in range(1, 20) for x in store.labels.of_entry(n)]  # fmt: skip
    finally:
        store.close()


# -- label ---------------------------------------------------------------------------------------


def test_label_writes_the_labels_table_and_replaces_my_earlier_label(
    config_dir: Path, database: Path
) -> None:
    base = ("--config", config_dir, "--db", database, "label")
    first = run(*base, "1", "eo", "yes")
    assert first.returncode == 0, first.stderr
    assert (
        "entry 1 ('Governor signs executive order on masks in Nevada') labelled relevant"
        in first.stdout
    )
    assert "its label from 1 vote(s): relevant" in first.stdout
    assert run(*base, "https://news.example/2", "eo", "unsure").returncode == 0  # by URL
    again = run(*base, "1", "eo", "no")
    assert again.returncode == 0
    assert labels_in(database) == [(1, "eo", 0, "cli", "cli"), (2, "eo", None, "cli", "cli")]


def test_label_refuses_an_unknown_topic_entry_or_database(
    config_dir: Path, database: Path, tmp_path: Path
) -> None:
    base = ("--config", config_dir, "--db", database, "label")
    topic = run(*base, "1", "sports", "yes")
    assert topic.returncode == 2
    assert "no topic 'sports' in topics.toml (topics: eo)" in topic.stderr
    missing = run(*base, "99", "eo", "yes")
    assert missing.returncode == 2
    assert f"no stored entry with id or URL '99' in {database}" in missing.stderr
    word = run(*base, "1", "eo", "maybe")
    assert word.returncode == 2 and "'maybe' is not one of 'yes', 'no', 'unsure'" in word.stderr
    nodb = run("--config", config_dir, "--db", tmp_path / "none.db", "label", "1", "eo", "yes")
    assert nodb.returncode == 2 and "no database at" in nodb.stderr
    assert not (tmp_path / "none.db").exists()
    assert labels_in(database) == []


# -- train ---------------------------------------------------------------------------------------


def test_train_writes_the_model_beside_topics_toml_and_reports_cv(
    config_dir: Path, labels_file: Path, tmp_path: Path
) -> None:
    result = run("--config", config_dir, "--db", tmp_path / "none.db", "train", "eo",
                 "--labels", labels_file)  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = config_dir / "models" / "eo.json"
    assert model.exists()
    assert "5-fold cross-validation over 72 items" in result.stdout
    assert "alerts (rule and score >=" in result.stdout and "rule alone:" in result.stdout
    assert f"wrote {model}" in result.stdout
    # progress and notes on stderr
    assert "cross-validation 5/5: fold 5/5" in result.stderr
    assert f"{labels_file}: 72 items labelled for eo" in result.stderr
    assert "no database at" in result.stderr
    assert not (tmp_path / "none.db").exists()
    doc = json.loads(model.read_text())
    assert doc["topic"] == "eo" and doc["training_data"]["items"] == 72

    # the same data and settings again: the same bytes, and nothing to compare it with
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    again = run("--config", config_dir, "--db", tmp_path / "none.db", "train", "eo",
                "--labels", labels_file, "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["written"] is True and "same settings" in report["verdict"]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    assert set(report["cv"]) >= {"alert", "alert_or_review", "rules_alone", "thresholds", "items"}
    assert set(report["cv"]["alert"]) == {"precision", "recall", "f1", "tp", "fp", "fn"}
    assert report["cv_without_database"] is None
    assert report["thresholds"] == report["cv"]["thresholds"]


def test_train_says_when_topics_toml_overrides_the_threshold_the_new_model_chose(
    config_dir: Path, labels_file: Path, tmp_path: Path
) -> None:
    args = ("--config", config_dir, "--db", tmp_path / "none.db", "train", "eo",
            "--labels", labels_file, "--force")  # fmt: skip
    assert run(*args).returncode == 0
    chosen = json.loads((config_dir / "models" / "eo.json").read_text())["thresholds"]
    topics = config_dir / "topics.toml"
    # the model's own alert threshold, and a review threshold it did not choose
    other = 0.0 if chosen["review"] else 0.01
    topics.write_text(
        TOPICS.replace(
            "exclude =",
            f'model = "models/eo.json"\nalert_threshold = {chosen["alert"]}\n'
            f"review_threshold = {other}\nexclude =",
        ),
        encoding="utf-8",
    )
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "alert_threshold" not in result.stderr
    assert (
        f"topics.toml sets review_threshold = {other} for eo, which overrides the new model's "
        f"{chosen['review']}: set it to {chosen['review']} or remove it"
    ) in result.stderr


def test_train_refuses_to_replace_a_model_that_does_better_on_items_it_never_saw(
    config_dir: Path, hard_labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eo.json"
    args = ("--config", config_dir, "--db", tmp_path / "none.db", "train", "eo",
            "--labels", hard_labels_file, "--out", out)  # fmt: skip
    assert run(*args).returncode == 0
    # Pretend the current model never saw these items: on them it now scores in-sample, which
    # beats the candidate's held-out scores.
    doc = json.loads(out.read_text())
    doc["training_data"]["ids"] = []
    out.write_text(json.dumps(doc))
    current = out.read_bytes()
    refused = run(*args, "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    report = json.loads(refused.stdout)
    assert report["written"] is False
    assert "refused: the current model scores better on the 96 labelled items" in report["verdict"]
    assert "(average precision 1.000 against 0." in report["verdict"]  # in-sample: perfect
    assert "use --force" in report["verdict"]
    assert out.read_bytes() == current
    forced = run(*args, "--force")
    assert forced.returncode == 0 and "written (--force)" in forced.stdout
    assert out.read_bytes() != current


def test_a_changed_setting_is_compared_on_the_same_folds(
    config_dir: Path, labels_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eo.json"
    args = ("--config", config_dir, "--db", tmp_path / "none.db", "train", "eo",
            "--labels", labels_file, "--out", out)  # fmt: skip
    first = run(
        *args, "--clause-weight", "1", "--title-chars", "--ensemble", "--sampled-weight", "3"
    )
    assert first.returncode == 0, first.stderr
    settings = json.loads(out.read_text())["hyperparameters"]
    assert (settings["title_chars"], settings["ensemble_words"], settings["sampled_weight"]) == (
        True, True, 3.0,
    )  # fmt: skip
    other = run(*args, "--clause-weight", "0")
    assert "the current model's settings on the same folds" in other.stdout
    assert other.returncode in (0, 1)
    written = json.loads(out.read_text())["hyperparameters"]
    assert written["clause_weight"] == (0.0 if other.returncode == 0 else 1.0)
    # the settings not given are the current model's
    assert (written["title_chars"], written["ensemble_words"], written["sampled_weight"]) == (
        True, True, 3.0,
    )  # fmt: skip


def test_the_databases_labels_reach_training_and_are_reported(
    config_dir: Path, labels_file: Path, database: Path
) -> None:
    for n in range(1, 13):
        label = "yes" if n <= len(RELEVANT) else "no"
        result = run("--config", config_dir, "--db", database, "label", str(n), "eo", label)
        assert result.returncode == 0, result.stderr
    run("--config", config_dir, "--db", database, "label", "1", "eo", "unsure")  # now unsure
    result = run("--config", config_dir, "--db", database, "train", "eo",
                 "--labels", labels_file, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{database}: 11 entries labelled for eo (1 unsure, left out)" in result.stderr
    report = json.loads(result.stdout)
    assert report["cv"]["items"] == 72 + 11
    assert report["cv_without_database"]["items"] == 72
    assert report["cv_on_file_items"]["items"] == 72
    text = run("--config", config_dir, "--db", database, "train", "eo", "--labels", labels_file)
    assert "the database's labels changed the alerts' figures" in text.stdout
    ignored = run("--config", config_dir, "--db", database, "train", "eo",
                  "--labels", labels_file, "--no-database", "--json")  # fmt: skip
    assert json.loads(ignored.stdout)["cv"]["items"] == 72


def test_train_bad_input_exits_2_naming_it(
    config_dir: Path, labels_file: Path, tmp_path: Path
) -> None:
    base = ("--config", config_dir, "--db", tmp_path / "none.db", "train")
    unknown = run(*base, "sports", "--labels", labels_file)
    assert unknown.returncode == 2 and "no topic 'sports'" in unknown.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "title": "x", "labels": {"eo": 1}}\nnot json\n')
    bad = run(*base, "eo", "--labels", broken)
    assert bad.returncode == 2 and f"{broken}:2: not valid JSON" in bad.stderr
    missing = run(*base, "eo", "--labels", tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and "nope.jsonl: cannot read" in missing.stderr
    nothing = run(*base, "eo")
    assert nothing.returncode == 2 and "no labelled items for 'eo'" in nothing.stderr
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(labelled_lines(PLACES[:1])[:8]) + "\n")
    too_few = run(*base, "eo", "--labels", few)
    assert too_few.returncode == 2
    assert (
        "6 relevant and 2 not relevant items; training needs at least 5 of each" in too_few.stderr
    )
    current = config_dir / "models" / "eo.json"
    current.parent.mkdir()
    current.write_text("{}")
    unreadable = run(*base, "eo", "--labels", labels_file)
    assert unreadable.returncode == 2
    assert f"{current}: not a relevance model" in unreadable.stderr
    assert current.read_text() == "{}"
    assert run(*base, "eo", "--labels", labels_file, "--force").returncode == 0
