"""The shipped topics' relevance models (config/models): current with the shipped rules, the seed
story alerting in both channels, small in memory, and rebuilt byte for byte by `make models`."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from aggregator.config.load import DEFAULTS_DIR, load_config
from aggregator.models import Document
from aggregator.relevance.model import RelevanceModel, Vocabularies, default_model_path
from aggregator.rules.matcher import TopicMatcher

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
SHARED = ROOT.parent / "shared" / "eval"
SEED = Document(
    "Trump kills AI security order after tech pressure",
    "The President withdrew an executive order on AI and cybersecurity after lobbying by tech "
    "executives.",
)


def shipped() -> dict[str, RelevanceModel]:
    config = load_config(CONFIG, {})
    vocabularies = Vocabularies()
    return {
        t.name: RelevanceModel.load(
            default_model_path(CONFIG, t.name), t.name, vocabularies=vocabularies
        )
        for t in config.topics
    }


def test_every_shipped_topic_has_a_model_trained_on_its_current_rules() -> None:
    config = load_config(CONFIG, {})
    models = shipped()
    for topic in config.topics:
        assert models[topic.name].trained_on_rules(topic.query, topic.exclude), (
            f"config/topics.toml changed since config/models/{topic.name}.json was trained: "
            "run `make models`"
        )


def test_the_embedded_defaults_carry_the_same_models() -> None:
    for path in sorted((CONFIG / "models").glob("*.json")):
        assert (DEFAULTS_DIR / "models" / path.name).read_bytes() == path.read_bytes()


def test_the_seed_story_alerts_in_both_channels_and_the_demo_false_alarm_does_not() -> None:
    config = load_config(CONFIG, {})
    matcher = TopicMatcher.compile(config.topics)
    models = shipped()
    matched = {m.topic: m for m in matcher.match(SEED)}
    assert set(matched) == {"ai-policy", "executive-orders"}
    for name, match in matched.items():
        model = models[name]
        assert model.thresholds.tier(model.score(SEED, match.clauses)) == "alert", name
    court = Document("Appeals court blocks Biden student loan repayment plan")
    assert matcher.match(court) == []
    movers = [term for term, _ in models["executive-orders"].movers(SEED, (), n=5)]
    assert "executive order" in movers


def test_both_models_share_one_vocabulary_and_stay_small() -> None:
    tracemalloc.start()
    try:
        models = shipped()
        # only what the models hold: other tests' threads may allocate meanwhile
        held = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, "*/aggregator/relevance/*")]
        )
        size = sum(stat.size for stat in held.statistics("filename"))
    finally:
        tracemalloc.stop()
    first, second = models.values()
    assert first._vocabulary is second._vocabulary
    # about 4.5 MB alone, up to 10 MB in a full run (interned strings are counted where they are
    # first made); bench/bench_cycle.py proves the service's whole budget (150 MB peak RSS)
    assert size < 12_000_000, f"{size / 1e6:.1f} MB loaded"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/eval (the labelled data)")
def test_make_models_rebuilds_the_shipped_files_byte_for_byte(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for name in ("topics.toml", "feeds.toml", "aggregator.toml"):
        (config / name).write_bytes((CONFIG / name).read_bytes())
    data = ["--curated", SHARED / "dev.jsonl", "--labels", SHARED / "train.jsonl", "--no-database",
            "--force"]  # fmt: skip
    for topic, weight in (("ai-policy", "1"), ("executive-orders", "0")):
        result = subprocess.run(
            [sys.executable, "-m", "aggregator", "--config", config, "train", topic, *data,
             "--clause-weight", weight],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        built = config / "models" / f"{topic}.json"
        assert built.read_bytes() == (CONFIG / "models" / f"{topic}.json").read_bytes(), topic
