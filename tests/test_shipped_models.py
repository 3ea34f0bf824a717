"""The shipped topics' relevance models (config/models): current with the shipped rules, the seed
story alerting in both channels, small in memory, and rebuilt byte for byte by `make models`."""

from __future__ import annotations

import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from aggregator.config.load import DEFAULTS_DIR, load_config
from aggregator.measure.topics import read_labelled
from aggregator.models import Document
from aggregator.relevance.features import CLAUSE_PREFIX, MATCHED
from aggregator.relevance.model import RelevanceModel, Vocabularies, default_model_path
from aggregator.relevance.thresholds import CURATED, SAMPLED
from aggregator.relevance.train import (
    Hyper,
    LabelledItem,
    clause_columns,
    design_matrix,
    examples_for,
    fit,
)
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
    # the demo's other false alarm: "close out" a convention held in a state, not a closure order
    speech = Document(
        "5 things to watch in Trump's RNC speech",
        "MILWAUKEE - Former President Trump will close out the Republican National Convention on "
        "Thursday night with a highly anticipated keynote address. The shooting at Trump's "
        "Butler, Pa., rally Saturday has loomed over this week's proceedings in Wisconsin.",
    )
    assert matcher.match(speech) == []
    beaches = Document("Governor Hochul will close gyms and indoor dining across New York")
    assert [m.topic for m in matcher.match(beaches)] == ["executive-orders"]
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
    assert first._rows is second._rows
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
    recipes = make_models_recipes()
    assert sorted(recipes) == ["ai-policy", "executive-orders"]
    for topic, settings in recipes.items():
        result = subprocess.run(
            [sys.executable, "-m", "aggregator", "--config", config, "train", topic, *data,
             *settings],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        built = config / "models" / f"{topic}.json"
        assert built.read_bytes() == (CONFIG / "models" / f"{topic}.json").read_bytes(), topic
        # a fresh model on unchanged rules: topics.toml's thresholds are the ones it chose
        assert "overrides the new model's" not in result.stderr


def make_models_recipes() -> dict[str, list[str]]:
    """Each topic's settings as the Makefile's `models` target gives them to `train`."""
    recipes = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "train " in line and "$(MODEL_DATA)" in line:
            words = line.split("train ", 1)[1].split()
            recipes[words[0]] = [w for w in words[1:] if w != "$(MODEL_DATA)"]
    return recipes


def test_topics_toml_sets_the_thresholds_its_models_chose() -> None:
    config = load_config(CONFIG, {})
    models = shipped()
    for topic in config.topics:
        chosen = models[topic.name].thresholds
        assert (topic.alert_threshold, topic.review_threshold) == (chosen.alert, chosen.review), (
            f"config/topics.toml's thresholds for {topic.name} are not the ones "
            f"config/models/{topic.name}.json chose: {chosen}"
        )


def shared_items(topic: str) -> list[LabelledItem]:
    """dev.jsonl (curated) then train.jsonl (sampled), in the order `make models` reads them."""
    out = []
    for name, origin in (("dev.jsonl", CURATED), ("train.jsonl", SAMPLED)):
        for item in read_labelled(SHARED / name):
            if topic in item.labels:
                out.append(LabelledItem(item.id, item.document(), item.labels[topic],
                                        topic in item.unsure, origin))  # fmt: skip
    return out


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/eval (the labelled data)")
@pytest.mark.parametrize("name", ["ai-policy", "executive-orders"])
def test_the_shipped_model_scores_every_labelled_item_as_scikit_learn_does(name: str) -> None:
    """On all of dev + train: the pure-Python score of the shipped file against scikit-learn's
    predict_proba of the models it was made of, refitted with its settings (for an ensemble,
    the mean of the members' log-odds)."""
    [topic] = [t for t in load_config(CONFIG, {}).topics if t.name == name]
    model = shipped()[name]
    items = shared_items(name)
    matcher = TopicMatcher.compile([topic])
    examples = examples_for(items, name, matcher)
    fitted = fit(examples, Hyper(**model.hyperparameters), clause_columns(matcher, name))
    x = design_matrix(fitted, examples)
    n_text = len(fitted.vectorizer.vocabulary_)
    probabilities = [  # the second member, when there is one, sees the words alone
        member.predict_proba(x if k == 0 else x[:, :n_text])[:, 1]
        for k, member in enumerate(fitted.members)
    ]
    want = [
        1 / (1 + math.exp(-sum(math.log(p / (1 - p)) for p in ps) / len(ps)))
        for ps in zip(*probabilities, strict=True)
    ]
    worst = 0.0
    for item, ex, expected in zip(items, examples, want, strict=True):
        clauses = [c.removeprefix(CLAUSE_PREFIX) for c in ex.clauses if c != MATCHED]
        worst = max(worst, abs(model.score(item.document, clauses, matched=ex.net) - expected))
    assert len(items) > 3000 and worst < 1e-9, worst
