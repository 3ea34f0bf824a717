"""`aggregator eval`, `explain` and `backtest`, run as real subprocesses on real files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.models import Entry
from aggregator.store import Store
from tests.configs import link_models
from tests.storing import Item, store_items

ROOT = Path(__file__).resolve().parents[1]
WHITE_HOUSE = "https://www.whitehouse.gov/presidential-actions/feed/"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from aggregator.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    shutil.copy(ROOT / "config" / "topics.toml", directory / "topics.toml")
    link_models(directory)
    (directory / "aggregator.toml").write_text("", encoding="utf-8")
    (directory / "feeds.toml").write_text(
        f'[[feeds]]\nurl = "{WHITE_HOUSE}"\nname = "White House"\ntopics = ["executive-orders"]\n'
        '\n[[feeds]]\nurl = "https://news.example/feed"\nname = "Example News"\n',
        encoding="utf-8",
    )
    return directory


def labelled(path: Path) -> Path:
    rows = [
        ("1", "Senate passes AI moratorium on state laws", {"ai-policy": 1, "executive-orders": 0}),
        ("2", "OpenAI launches a new model", {"ai-policy": 0, "executive-orders": 0}),
        ("3", "Biden signs executive order on voting", {"ai-policy": 0, "executive-orders": 1}),
        ("4", "Cooking with tomatoes", {"ai-policy": 1, "executive-orders": 0}),  # a miss
    ]
    path.write_text(
        "".join(
            json.dumps(
                {"id": i, "title": t, "summary": "", "source": "x", "labels": labels, "unsure": []}
            )
            + "\n"
            for i, t, labels in rows
        ),
        encoding="utf-8",
    )
    return path


def test_eval_json(config_dir: Path, tmp_path: Path) -> None:
    result = run("--config", config_dir, "eval", labelled(tmp_path / "l.jsonl"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    figures = {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "tp": 1, "fp": 0, "fn": 1, "tn": 2}
    assert data["topics"]["ai-policy"] == {**figures, "rules_only": figures, "review": figures}
    assert data["topics"]["executive-orders"]["tp"] == 1


def test_eval_text_lists_misses(config_dir: Path, tmp_path: Path) -> None:
    result = run("--config", config_dir, "eval", labelled(tmp_path / "l.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "ai-policy: precision 1.000  recall 0.500" in result.stdout
    assert "false negatives (1):\n    4  Cooking with tomatoes" in result.stdout


def test_eval_bad_file_names_file_and_line(config_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "title": "x", "labels": {}}\n{oops\n', encoding="utf-8")
    result = run("--config", config_dir, "eval", bad)
    assert result.returncode == 2
    assert f"{bad}:2: not valid JSON" in result.stderr


def test_eval_candidate_topics_with_a_syntax_error(config_dir: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.toml"
    candidate.write_text('[topics.x]\nchannel = "#x"\nquery = "AI AND (law"\n', encoding="utf-8")
    result = run(
        "--config", config_dir, "eval", labelled(tmp_path / "l.jsonl"), "--topics", candidate
    )
    assert result.returncode == 2
    assert f"{candidate}:3: topics.x.query: this '(' is never closed at column 8" in result.stderr
    assert "AI AND (law\n           ^" in result.stderr


def test_explain_text(config_dir: Path) -> None:
    result = run(
        "--config",
        config_dir,
        "explain",
        "--title",
        "Trump kills AI security order after tech pressure",
    )
    assert result.returncode == 0, result.stderr
    assert "ai-policy: MATCH" in result.stdout
    assert "executive-orders: MATCH" in result.stdout
    assert "title: [Trump] kills [AI] security [order] after tech pressure" in result.stdout
    assert "\x1b[" not in result.stdout  # no colour codes when not a terminal


def test_explain_names_the_veto(config_dir: Path) -> None:
    result = run("--config", config_dir, "explain", "--title", "Bill Gates backs new AI bill")
    assert result.returncode == 0, result.stderr
    assert "ai-policy: no match (vetoed by an exclusion)" in result.stdout
    assert 'a person, not a bill: "Bill Gates"   <- Bill Gates' in result.stdout


def test_explain_needs_an_item(config_dir: Path) -> None:
    result = run("--config", config_dir, "explain")
    assert result.returncode == 2
    assert "give --title and/or --summary" in result.stderr


def stored_db(path: Path) -> Path:
    now = datetime.now(UTC)

    def entry(n: int, feed: str, title: str, summary: str, age_days: int) -> Item:
        return Item(
            Entry(
                feed,
                f"g{n}",
                f"https://site.example/{n}?utm_source=rss",
                f"https://site.example/{n}",
                title,
                summary,
                now - timedelta(days=age_days),
                f"h{n}",
                "src",
            )
        )

    store = Store.open(path)
    try:
        store_items(
            store,
            [
                entry(
                    1,
                    WHITE_HOUSE,
                    "Restoring Gold Standard Science",
                    "By the authority vested in me as President, it is hereby ordered",
                    1,
                ),
                entry(2, "https://news.example/feed", "Senate passes AI moratorium", "", 3),
                entry(3, "https://news.example/feed", "Old AI law story", "", 90),
            ],
            now,
        )
    finally:
        store.close()
    return path


def test_explain_a_stored_entry_by_id_and_by_url(config_dir: Path, tmp_path: Path) -> None:
    db = stored_db(tmp_path / "db.sqlite")
    by_id = run("--config", config_dir, "--db", db, "explain", "1")
    assert by_id.returncode == 0, by_id.stderr
    assert f"entry 1 from {WHITE_HOUSE}" in by_id.stdout
    assert "executive-orders: MATCH" in by_id.stdout
    assert "also belongs to: executive-orders" in by_id.stdout  # feed membership
    by_url = run("--config", config_dir, "--db", db, "explain", "https://site.example/2#top")
    assert by_url.returncode == 0, by_url.stderr
    assert "entry 2 from https://news.example/feed" in by_url.stdout
    assert "ai-policy: MATCH" in by_url.stdout
    missing = run("--config", config_dir, "--db", db, "explain", "https://elsewhere.example/")
    assert missing.returncode == 1
    assert "no stored entry" in missing.stderr


def test_backtest_stored_history_since(config_dir: Path, tmp_path: Path) -> None:
    db = stored_db(tmp_path / "db.sqlite")
    result = run("--config", config_dir, "--db", db, "backtest", "--since", "30d")
    assert result.returncode == 0, result.stderr
    assert "2 items matched against 2 topics" in result.stdout
    assert "ai-policy: 1 matches on 1 days" in result.stdout
    assert "Old AI law story" not in result.stdout  # 90 days old: outside the window
    everything = run("--config", config_dir, "--db", db, "backtest", "--since", "365d")
    assert "ai-policy: 2 matches on 2 days" in everything.stdout


def test_backtest_csv_with_a_candidate_against_the_live_rules(
    config_dir: Path, tmp_path: Path
) -> None:
    csv_file = tmp_path / "items.csv"
    csv_file.write_text(
        "id,source,published,title,summary,link\n"
        "a,NPR,2025-01-02T10:00:00Z,Senate passes AI moratorium,,https://x/a\n"
        "b,NPR,2025-01-03T10:00:00Z,Robots bill advances in Congress,,https://x/b\n"
        "c,NPR,2025-01-03T11:00:00Z,Cooking with tomatoes,,https://x/c\n",
        encoding="utf-8",
    )
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(
        '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "robots AND (bill OR law)"\n',
        encoding="utf-8",
    )
    result = run(
        "--config",
        config_dir,
        "backtest",
        "--csv",
        csv_file,
        "--topics",
        candidate,
        "--against",
        config_dir / "topics.toml",
    )
    assert result.returncode == 0, result.stderr
    assert "3 items matched against 2 topics" in result.stdout
    assert "gained vs live rules: 1\n    + 2025-01-03  Robots bill advances in Congress" in (
        result.stdout
    )
    assert "lost vs live rules: 1\n    - 2025-01-02  Senate passes AI moratorium" in result.stdout
    assert "matching 3 items" in result.stderr  # the progress bar's label


def test_a_huge_window_on_the_command_line_is_an_error_not_a_traceback(config_dir: Path) -> None:
    backtest = run("--config", config_dir, "backtest", "--since", "999999999999d")
    assert backtest.returncode == 2 and "reaches back too far" in backtest.stderr
    assert "Traceback" not in backtest.stderr
    stories = config_dir.parent / "stories.jsonl"
    rows = [
        {"id": str(n), "source": f"s{n}", "published": f"2026-01-0{n}T10:00:00Z",
         "title": f"Senate passes AI bill {n}", "summary": "", "story": "a",
         "link": f"https://e.example/{n}"}
        for n in (1, 2)
    ]  # fmt: skip
    stories.write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluated = run("eval-stories", stories, "--window", "999999999999d")
    assert evaluated.returncode == 2 and "too long" in evaluated.stderr, evaluated.stderr
    assert "Traceback" not in evaluated.stderr


def test_check_config_loads_the_models_and_names_a_missing_or_stale_one(config_dir: Path) -> None:
    ok = run("--config", config_dir, "check-config")
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"models: ai-policy \(alert 0\.\d\d, review 0\.\d\d\)", ok.stdout)
    topics = config_dir / "topics.toml"
    shipped = topics.read_text(encoding="utf-8")
    topics.write_text(shipped.replace("models/ai-policy.json", "models/nope.json"), "utf-8")
    missing = run("--config", config_dir, "check-config")
    assert missing.returncode == 2
    assert "topics.ai-policy.model:" in missing.stderr and "nope.json" in missing.stderr
    assert "cannot read the model" in missing.stderr
    edited = shipped.replace("OR LLM OR LLMs", 'OR LLM OR LLMs OR "robot lawyer*"', 1)
    assert edited != shipped
    topics.write_text(edited, "utf-8")
    stale = run("--config", config_dir, "check-config")
    assert stale.returncode == 0, stale.stderr
    assert "topics.ai-policy: the query changed since its model was trained" in stale.stderr
    assert "aggregator train ai-policy" in stale.stderr
