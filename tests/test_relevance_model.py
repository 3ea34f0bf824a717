"""The exported relevance model: scored in pure Python exactly as scikit-learn scores it, loaded
strictly, small in memory, and never pulling scikit-learn, numpy or scipy into the service."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.config.model import TopicConfig
from aggregator.errors import ModelError
from aggregator.models import Document
from aggregator.relevance.features import model_terms
from aggregator.relevance.model import (
    RelevanceModel,
    Thresholds,
    Vocabularies,
    decode_doubles,
    default_model_path,
    encode_doubles,
    rules_sha256,
)
from aggregator.relevance.thresholds import CURATED, SAMPLED
from aggregator.relevance.train import (
    Example,
    Hyper,
    LabelledItem,
    average_precision,
    clause_columns,
    design_matrix,
    examples_for,
    export,
    fit,
    predict,
)
from aggregator.rules.matcher import TopicMatcher

ROOT = Path(__file__).resolve().parents[1]

QUERY = """
(  # 1. An order
  order OR orders OR decree
)
AND
(  # 2. By a governor or president
  governor OR president OR Trump
)
OR "executive order"  # 3. the instrument by name
"""
TOPIC = TopicConfig("eo", "#eo", QUERY, "court NEAR/2 order")

TEXTS = [
    ("Governor signs executive order on masks", "The order takes effect Monday.", 1),
    ("Trump signs order on tariffs", "The president imposed duties by proclamation.", 1),
    ("Biden's order on voting", "An executive order expands access.", 1),
    ("Newsom's stay-at-home order extended", "The governor's order stays.", 1),
    ("President issues decree on wages", "The decree raises pay.", 1),
    ("Governor orders schools closed", "The governor's orders apply statewide.", 1),
    ("Stocks fall on tariff fears", "Markets slid as investors worried.", 0),
    ("Judge orders release of files", "A court order was issued.", 0),
    ("Company opens new store", "Shoppers lined up early; orders were taken.", 0),
    ("Restaurant menu adds burger", "Diners can order online.", 0),
    ("Trump orders a cheeseburger", "The president ate lunch.", 0),
    ("Court order blocks governor", "The judge's order stands.", 0),
]
PLACES = ["Ohio", "Texas", "Maine", "Utah"]


def items() -> list[LabelledItem]:
    """The texts four times over, each time in another state, half curated, half sampled."""
    out = []
    for round_, place in enumerate(PLACES):
        for i, (title, summary, label) in enumerate(TEXTS):
            origin = SAMPLED if (i + round_) % 2 else CURATED
            doc = Document(f"{title} in {place}", summary)
            out.append(LabelledItem(f"{place}-{i}", doc, label, origin=origin))
    return out


def trained(hyper: Hyper) -> tuple[Any, list[Any], TopicMatcher]:
    matcher = TopicMatcher.compile([TOPIC])
    examples = examples_for(items(), "eo", matcher)
    fitted = fit(examples, hyper, clause_columns(matcher, "eo"))
    return fitted, examples, matcher


def exported(tmp_path: Path, hyper: Hyper | None = None, **changes: Any) -> Path:
    hyper = hyper or Hyper(min_df=1)
    fitted, examples, _ = trained(hyper)
    from aggregator.relevance.train import cross_validate

    cv = cross_validate(examples, hyper, clause_columns(TopicMatcher.compile([TOPIC]), "eo"))
    doc = export(fitted, TOPIC, examples, items(), cv)
    doc.update(changes)
    path = tmp_path / "eo.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "hyper",
    [
        Hyper(min_df=1, clause_weight=1.0),  # words and clauses
        Hyper(min_df=1, clause_weight=0.0),  # words alone
        Hyper(min_df=1, clause_weight=1.0, title_chars=True),  # and the title's letters
        Hyper(min_df=1, title_chars=True, ensemble_words=True),  # two models averaged
    ],
    ids=["clauses", "words", "title-chars", "ensemble"],
)
def test_scores_equal_scikit_learn(tmp_path: Path, hyper: Hyper) -> None:
    fitted, examples, matcher = trained(hyper)
    expected = predict(fitted, examples)
    model = RelevanceModel.load(exported(tmp_path, hyper), "eo")
    assert model.topic == "eo" and model.terms > 20
    for item, ex, want in zip(items(), examples, expected, strict=True):
        doc = item.document
        matched = [m for m in matcher.match(doc) if m.topic == "eo"]
        clauses = matched[0].clauses if matched else matcher.clause_hits(doc)["eo"]
        assert ex.net == bool(matched)
        assert abs(model.score(doc, clauses, matched=bool(matched)) - want) < 1e-9


def test_terms_are_words_pairs_title_words_and_the_title_words_letters() -> None:
    terms = model_terms("Trump's AI bans", "Exports halted")
    assert terms == [
        "trump", "ai", "bans", "trump ai", "ai bans",  # the title: "'s" is no word
        "exports", "halted", "exports halted",  # the summary: no pair across the fields
        "t:trump", "t:ai", "t:bans",
        "c:<tru", "c:trum", "c:rump", "c:ump>", "c:<ai>", "c:<ban", "c:bans", "c:ans>",
    ]  # fmt: skip
    # the forms of a word share most of their letters: the point of the grams
    export, exporting = (
        {t for t in model_terms(title, "") if t.startswith("c:")}
        for title in ("export", "exporting")
    )
    assert export & exporting == {"c:<exp", "c:expo", "c:xpor", "c:port"}


def test_a_model_trained_without_the_title_chars_ignores_them(tmp_path: Path) -> None:
    model = RelevanceModel.load(exported(tmp_path))
    assert not any(t.startswith("c:") for t in model._rows)
    with_chars = RelevanceModel.load(exported(tmp_path, Hyper(min_df=1, title_chars=True)))
    assert any(t.startswith("c:") for t in with_chars._rows)
    doc = Document("Governor signs executive order", "The order takes effect.")
    assert any(name.startswith("letters:") for name, _ in with_chars.movers(doc, (), n=100))
    assert not any(name.startswith("letters:") for name, _ in model.movers(doc, (), n=100))


def test_packed_numbers_are_exact_and_a_file_with_json_lists_scores_the_same(
    tmp_path: Path,
) -> None:
    values = [1.0, -0.0, 1e-300, 2.5e300, 1 / 3, -7.125]
    assert list(decode_doubles(encode_doubles(values))) == values
    hyper = Hyper(min_df=1)
    packed = exported(tmp_path, hyper)
    doc = json.loads(packed.read_text())
    assert isinstance(doc["idf"], str) and isinstance(doc["weights"], str)
    listed = tmp_path / "listed.json"
    doc.update(idf=list(decode_doubles(doc["idf"])), weights=list(decode_doubles(doc["weights"])))
    listed.write_text(json.dumps(doc))
    a, b = RelevanceModel.load(packed, "eo"), RelevanceModel.load(listed, "eo")
    for item in items():
        doc_ = item.document
        assert a.score(doc_, ["1"]) == b.score(doc_, ["1"])


def test_a_version_1_file_still_scores_exactly(tmp_path: Path) -> None:
    """Round 1's files (words only, no recipe) are read, and score as their trainer did: the
    title's letters, computed since, are outside their vocabulary."""
    hyper = Hyper(min_df=1)
    fitted, examples, _ = trained(hyper)
    expected = predict(fitted, examples)
    path = exported(tmp_path, hyper)
    doc = json.loads(path.read_text())
    # version 1: no recipe, and a term -> [idf, weight] map instead of three lists
    idf, weights = decode_doubles(doc.pop("idf")), decode_doubles(doc.pop("weights"))
    pairs = zip(doc.pop("terms"), idf, weights, strict=True)
    doc.update(format_version=1, features={"terms": "words (round 1)"},
               terms={term: [idf, weight] for term, idf, weight in pairs})  # fmt: skip
    path.write_text(json.dumps(doc))
    model = RelevanceModel.load(path, "eo")
    for item, ex, want in zip(items(), examples, expected, strict=True):
        clauses = [c.removeprefix("rule:") for c in ex.clauses if c != "rule:matched"]
        assert abs(model.score(item.document, clauses, matched=ex.net) - want) < 1e-9


def test_one_model_predicts_as_scikit_learn_does() -> None:
    fitted, examples, _ = trained(Hyper(min_df=1, title_chars=True))
    [member] = fitted.members
    want = member.predict_proba(design_matrix(fitted, examples))[:, 1]
    assert max(abs(predict(fitted, examples) - want)) < 1e-12


def test_the_ensemble_is_the_mean_of_its_members_log_odds() -> None:
    """Two models, one with the clause features and one on words alone, exported as one weight
    vector: the log-odds it gives are the mean of the two members' log-odds."""
    fitted, examples, _ = trained(Hyper(min_df=1, title_chars=True, ensemble_words=True))
    with_clauses, words_alone = fitted.members
    x = design_matrix(fitted, examples)
    n_text = len(fitted.vectorizer.vocabulary_)
    assert x.shape[1] > n_text  # the clause columns, which the words member never sees
    first = with_clauses.predict_proba(x)[:, 1]
    second = words_alone.predict_proba(x[:, :n_text])[:, 1]
    assert max(abs(first - second)) > 0.01  # two different models

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    for got, a, b in zip(predict(fitted, examples), first, second, strict=True):
        assert abs(logit(got) - (logit(a) + logit(b)) / 2) < 1e-9
    # without clause features there is nothing to average: one model
    assert len(trained(Hyper(min_df=1, clause_weight=0.0, ensemble_words=True))[0].members) == 1


def test_sampled_items_weigh_more_than_curated_ones_when_asked() -> None:
    """Where curated and sampled labels disagree on the same words, the sampled ones win when
    they weigh more: the service scores what the feeds bring."""
    disputed = [
        LabelledItem(f"{origin}-{place}", Document(f"Tariff letter sent in {place}"), label,
                     origin=origin)
        for place in PLACES
        for origin, label in ((CURATED, 0), (SAMPLED, 1))
    ]  # fmt: skip
    matcher = TopicMatcher.compile([TOPIC])
    keys = clause_columns(matcher, "eo")
    examples = examples_for([*items(), *disputed], "eo", matcher)
    probe = examples_for([LabelledItem("p", Document("Tariff letter sent"), 1)], "eo", matcher)
    scores = [predict(fit(examples, Hyper(min_df=1, sampled_weight=w), keys), probe)[0]
              for w in (1.0, 3.0)]  # fmt: skip
    assert scores[1] > scores[0] + 0.05, scores
    # with no curated item, sampled items weigh as before (no mere change of C)
    alone = [ex for ex in examples if ex.origin == SAMPLED]
    same = [fit(alone, Hyper(min_df=1, sampled_weight=w), keys).coef for w in (1.0, 3.0)]
    assert (same[0] == same[1]).all()


def test_average_precision_ranks_what_the_rule_missed_last_and_leaves_unsure_out() -> None:
    def example(score: float, label: int, net: bool = True, unsure: bool = False,
                origin: str = SAMPLED) -> tuple[Example, float]:  # fmt: skip
        return Example(f"{score}", origin, (), frozenset(), net, label, unsure), score

    pairs = [
        example(0.9, 1), example(0.8, 0), example(0.7, 1),
        example(0.99, 1, net=False),  # the rule missed it: ranked with the lowest
        example(0.5, 0, net=False),
        example(0.95, 0, unsure=True),  # left out, as eval leaves it out
        example(0.1, 1, origin=CURATED),
    ]  # fmt: skip
    examples, scores = [e for e, _ in pairs], [s for _, s in pairs]
    # ranked: + - + then (+ -) tied at 0: precision 1, 2/3, 3/5 at recall 1/3, 2/3, 1
    want = (1 + 2 / 3 + 3 / 5) / 3
    assert math.isclose(average_precision(examples, scores, frozenset({SAMPLED})), want)
    # every origin: the curated positive ranks fourth, above the two tied at 0
    assert math.isclose(average_precision(examples, scores), (1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)
    assert average_precision(examples, scores, frozenset({"team"})) == 0.0  # nothing to rank


def test_clauses_and_the_verdict_move_the_score(tmp_path: Path) -> None:
    model = RelevanceModel.load(exported(tmp_path))
    doc = Document("Governor signs order", "")
    base = model.score(doc, (), matched=False)
    assert model.score(doc, ("1", "2"), matched=False) != base
    assert model.score(doc, ("1", "2"), matched=True) != model.score(doc, ("1", "2"), matched=False)
    assert model.score(doc, ("no such clause",), matched=False) == base


def test_movers_explain_the_log_odds(tmp_path: Path) -> None:
    model = RelevanceModel.load(exported(tmp_path))
    doc = Document("Governor signs executive order", "The order takes effect.")
    movers = model.movers(doc, ("1", "2", "3"), n=50)
    names = [name for name, _ in movers]
    assert "order" in names and "title:governor" in names and "rule matched" in names
    assert any(name.startswith("clause ") for name in names)
    sizes = [abs(w) for _, w in movers]
    assert sizes == sorted(sizes, reverse=True)
    # every contribution of the item is listed, so they add up to its log-odds
    score = model.score(doc, ("1", "2", "3"))
    assert math.isclose(model.intercept + sum(w for _, w in movers), math.log(score / (1 - score)))
    assert len(model.movers(doc, ("1",), n=3)) == 3


def test_thresholds_and_tiers(tmp_path: Path) -> None:
    path = exported(tmp_path, thresholds={"alert": 0.6, "review": 0.3})
    model = RelevanceModel.load(path)
    assert model.thresholds == Thresholds(0.6, 0.3)
    assert [model.thresholds.tier(s) for s in (0.6, 0.59, 0.3, 0.29)] == [
        "alert", "review", "review", "none",
    ]  # fmt: skip


def test_the_rules_the_model_was_trained_with(tmp_path: Path) -> None:
    model = RelevanceModel.load(exported(tmp_path))
    assert model.query_sha256 == rules_sha256(QUERY, "court NEAR/2 order")
    assert model.trained_on_rules(QUERY, "court NEAR/2 order")
    assert not model.trained_on_rules(QUERY.replace("2. By", "2. Of"), "court NEAR/2 order")
    assert not model.trained_on_rules(QUERY, None)


def test_default_path_is_beside_topics_toml() -> None:
    assert default_model_path(Path("/etc/aggregator"), "eo") == Path(
        "/etc/aggregator/models/eo.json"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 99}, "format_version 99 is not supported"),
        ({"features": {"terms": "words (round 1)"}}, "trained on the terms 'words"),
        ({"features": None}, "trained on the terms None"),
        ({"format": "other"}, "not a relevance model"),
        ({"thresholds": {"alert": 0.2, "review": 0.5}}, "review <= alert"),
        ({"thresholds": {"alert": 1.5, "review": 0.5}}, "review <= alert"),
        ({"terms": {"a": [1.0, 1.0]}}, "terms must be a list of strings"),
        ({"terms": ["a", 1], "idf": [1.0, 1.0], "weights": [1.0, 1.0]}, "list of strings"),
        ({"terms": ["a"], "idf": [1.0, 2.0], "weights": [1.0]}, "1 terms, 2 idf and 1 weights"),
        ({"terms": ["a"], "idf": [1.0], "weights": ["x"]}, "malformed model"),
        ({"terms": ["a"], "idf": [0.0], "weights": [1.0]}, "idf of a term must be positive"),
        ({"terms": ["a"], "idf": [1.0], "weights": [float("nan")]}, "not a finite number"),
        ({"terms": ["a"], "idf": "not base64!", "weights": [1.0]}, "not valid base64"),
        ({"terms": ["a"], "idf": "AAAA", "weights": [1.0]}, "3 bytes, not a multiple of 8"),
        (
            {"terms": ["a", "b"], "idf": encode_doubles([1.0]), "weights": [1.0, 1.0]},
            "2 terms, 1 idf and 2 weights",
        ),
        ({"format_version": 1, "terms": {"a": [1.0]}}, "malformed model: IndexError"),
        ({"format_version": 1, "terms": ["a"]}, "malformed model"),
        ({"intercept": None}, "malformed model"),
        ({"hyperparameters": {}}, "malformed model"),
    ],
)
def test_bad_files_are_refused_by_name(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = exported(tmp_path, **changes)
    with pytest.raises(ModelError, match=message) as caught:
        RelevanceModel.load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_unreadable_files_and_another_topic_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read the model"):
        RelevanceModel.load(tmp_path / "missing.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        RelevanceModel.load(garbage)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a relevance model"):
        RelevanceModel.load(listed)
    with pytest.raises(ModelError, match="a model of topic 'eo', not of 'ai-policy'"):
        RelevanceModel.load(exported(tmp_path), "ai-policy")


def test_models_loaded_together_share_one_term_index_and_score_as_alone(tmp_path: Path) -> None:
    """Words only, words and the title's letters (a superset), and a third whose terms and idf
    differ: one index holds the union, and each model scores exactly as when loaded alone,
    whatever the order of loading."""
    (tmp_path / "words").mkdir()
    (tmp_path / "chars").mkdir()
    words = exported(tmp_path / "words")
    chars = exported(tmp_path / "chars", Hyper(min_df=1, title_chars=True))
    other = tmp_path / "other.json"
    doc = json.loads(words.read_text())
    kept = slice(1, None, 2)  # every other term, its idf 1.5 times higher, its weight reversed
    idf, weights = decode_doubles(doc["idf"]), decode_doubles(doc["weights"])
    doc.update(terms=doc["terms"][kept], idf=[i * 1.5 for i in idf[kept]],
               weights=[-w for w in weights[kept]])  # fmt: skip
    other.write_text(json.dumps(doc))
    paths = [words, chars, other]
    docs = [item.document for item in items()]
    docs.append(Document("Governor decree in Vermont", "An order nobody trained on"))
    alone = [[RelevanceModel.load(p).score(d, ("1",)) for d in docs] for p in paths]
    union = {t for p in paths for t in json.loads(p.read_text())["terms"]}
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        vocabularies = Vocabularies()
        models = {k: RelevanceModel.load(paths[k], vocabularies=vocabularies) for k in order}
        assert set(vocabularies.rows) == union
        assert all(m._rows is vocabularies.rows for m in models.values())
        for k, model in models.items():
            assert model.terms == len(json.loads(paths[k].read_text())["terms"])
            assert [model.score(d, ("1",)) for d in docs] == alone[k], (order, k)
    assert RelevanceModel.load(words)._rows is not RelevanceModel.load(words)._rows  # unasked


def test_the_service_never_imports_scikit_learn_numpy_or_scipy() -> None:
    """Importing them costs tens of MB in every process: every module but the trainer is
    imported in a fresh interpreter, models are loaded and scored, and none of them came in."""
    code = """
import pkgutil, importlib, sys, json
from pathlib import Path
import aggregator
for info in pkgutil.walk_packages(aggregator.__path__, "aggregator."):
    if info.name != "aggregator.relevance.train":
        importlib.import_module(info.name)
from aggregator.models import Document
from aggregator.relevance.model import RelevanceModel, Vocabularies
vocabularies = Vocabularies()
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    model = RelevanceModel.load(path, vocabularies=vocabularies)
    model.score(Document("Trump signs an executive order on AI"), ("1",))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"sklearn", "numpy", "scipy"})
print(json.dumps(heavy))
"""
    models = ROOT / "config" / "models"
    result = subprocess.run(
        [sys.executable, "-c", code, str(models)], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
    assert "aggregator.relevance.train" not in result.stdout
