"""Training a topic's relevance model: TF-IDF + logistic regression, cross-validated, exported.

The only module that imports numpy, scipy and scikit-learn, and only ``aggregator train`` imports
it: the service scores exported weights in pure Python (:mod:`aggregator.relevance.model`).

Features are the item's words and, per topic, the character 4-grams of its title's words
(:func:`~aggregator.relevance.features.model_terms`), TF-IDF weighted and L2-normalised, plus one
binary feature per labelled clause of the topic's query that held and one for the rule's verdict
(unless ``clause_weight`` is 0). The model learns from every
labelled item, caught by the rule or not; the service scores only what the rule caught.

A topic may average two logistic regressions over the same TF-IDF columns, one with the clause
features and one on words alone (``ensemble_words``). The mean of their log-odds is the log-odds of
their mean weights, so the export is still one weight vector and the scorer one dot product.

Deterministic: the same items, rules and settings give a byte-identical file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold

from aggregator.errors import ModelError
from aggregator.models import Document
from aggregator.relevance.features import (
    CHAR_PREFIX,
    CLAUSE_PREFIX,
    MATCHED,
    TERMS_RECIPE,
    clause_features,
    model_terms,
)
from aggregator.relevance.model import (
    FORMAT,
    FORMAT_VERSION,
    RelevanceModel,
    encode_doubles,
    rules_sha256,
)
from aggregator.relevance.thresholds import (
    CURATED,
    SAMPLED,
    SAMPLED_POOL,
    TEAM,
    Counts,
    choose_thresholds,
    counts,
    curve,
    threshold_pool,
)
from aggregator.rules.matcher import TopicMatcher, TopicRules

SEED = 17
FOLDS = 5
PARTITIONS = (SEED, SEED + 1, SEED + 2, SEED + 3, SEED + 4)  # CV partitions, pooled
MIN_UNSEEN = 30  # items the current model never saw, to compare it with a candidate on them

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Hyper:
    """The learner's settings, recorded in the model file. The defaults are round 1's choice
    (issue 17): C=10 with balanced class weights; clause features on for ai-policy, off for
    executive-orders (they hurt its ranking in cross-validation)."""

    C: float = 10.0
    class_weight: str | None = "balanced"
    sublinear_tf: bool = True
    min_df: int = 2
    clause_weight: float = 1.0  # the value of a clause feature (0: no clause features)
    train_on: str = "all"  # "net": only items the query catches; "all": every item
    unsure: str = "keep"  # "keep": train on unsure items with their label; "drop"
    dev_weight: float = 1.0  # sample weight of curated items
    bigrams: bool = True
    title_terms: bool = True  # title words counted again under "t:"
    clauses_as_terms: bool = False  # clause hits as TF-IDF terms instead of a separate block
    outside_weight: float = 1.0  # sample weight of items the query does not catch
    title_chars: bool = False  # the character 4-grams of the title's words (terms "c:...")
    ensemble_words: bool = False  # average with a second model on words alone (no clauses)
    # the sample weight of sampled and team items relative to curated ones: the service scores
    # what the feeds bring, not hand-picked clear cases (no effect without curated items)
    sampled_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class LabelledItem:
    """One labelled item for one topic."""

    id: str
    document: Document
    label: int  # 1 relevant, 0 not
    unsure: bool = False  # trained on with its label, left out of every score
    origin: str = SAMPLED  # SAMPLED, CURATED or TEAM


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    origin: str
    terms: tuple[str, ...]
    clauses: frozenset[str]  # clause features: "rule:2a", ..., "rule:matched"
    net: bool  # the topic's query matched and its exclude did not veto
    label: int
    unsure: bool


def examples_for(items: Sequence[LabelledItem], topic: str, matcher: TopicMatcher,
                 progress: Progress | None = None) -> list[Example]:  # fmt: skip
    out = []
    for n, item in enumerate(items, start=1):
        doc = item.document
        matched = any(m.topic == topic for m in matcher.match(doc))
        held = matcher.clause_hits(doc)[topic]
        out.append(
            Example(
                id=item.id,
                origin=item.origin,
                terms=tuple(model_terms(doc.title, doc.summary)),
                clauses=frozenset(clause_features(held, matched)),
                net=matched,
                label=item.label,
                unsure=item.unsure,
            )
        )
        if progress and n % 1000 == 0:
            progress(f"features: {n}/{len(items)} items")
    return out


def clause_columns(matcher: TopicMatcher, topic: str) -> tuple[str, ...]:
    return tuple(sorted({CLAUSE_PREFIX + k for k in matcher.clause_keys(topic)} | {MATCHED}))


# -- fitting -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fitted:
    """One weight vector over [TF-IDF terms, clause features] and an intercept: what is
    exported. ``members``: the fitted scikit-learn models it was made of (the second one, when
    there is one, sees the TF-IDF columns alone)."""

    hyper: Hyper
    vectorizer: TfidfVectorizer
    clause_keys: tuple[str, ...]
    coef: Any  # numpy array: len(vocabulary) + len(clause_keys) weights
    intercept: float
    members: tuple[LogisticRegression, ...]


def _identity(terms: tuple[str, ...]) -> tuple[str, ...]:
    return terms


def _terms(ex: Example, hyper: Hyper) -> tuple[str, ...]:
    terms = ex.terms
    if not hyper.title_chars:
        terms = tuple(t for t in terms if not t.startswith(CHAR_PREFIX))
    if not hyper.bigrams:
        terms = tuple(t for t in terms if " " not in t)
    if not hyper.title_terms:
        terms = tuple(t for t in terms if not t.startswith("t:"))
    if hyper.clauses_as_terms:
        terms = (*terms, *sorted(ex.clauses))
    return terms


def _trainable(ex: Example, hyper: Hyper) -> bool:
    if hyper.unsure == "drop" and ex.unsure:
        return False
    return hyper.train_on == "all" or ex.net


def _matrix(vectorizer: TfidfVectorizer, keys: Sequence[str], examples: Sequence[Example],
            weight: float) -> Any:  # fmt: skip
    text = vectorizer.transform([(*ex.terms, *sorted(ex.clauses)) for ex in examples])
    if not keys or weight == 0:
        return text.tocsr()
    column = {k: j for j, k in enumerate(keys)}
    rows, cols = [], []
    for i, ex in enumerate(examples):
        for key in ex.clauses:
            if key in column:
                rows.append(i)
                cols.append(column[key])
    hits = sparse.csr_matrix(
        (np.full(len(rows), weight), (rows, cols)), shape=(len(examples), len(keys))
    )
    return sparse.hstack([text, hits], format="csr")


def fit(examples: Sequence[Example], hyper: Hyper, clause_keys: Sequence[str]) -> Fitted:
    train = [ex for ex in examples if _trainable(ex, hyper)]
    vectorizer = TfidfVectorizer(
        analyzer=_identity, sublinear_tf=hyper.sublinear_tf, min_df=hyper.min_df, norm="l2",
        smooth_idf=True, dtype=np.float64,
    )  # fmt: skip
    vectorizer.fit([_terms(ex, hyper) for ex in train])
    keys = tuple(clause_keys) if hyper.clause_weight else ()
    x = _matrix(vectorizer, keys, train, hyper.clause_weight)
    y = np.array([ex.label for ex in train])
    sampled = hyper.sampled_weight if any(ex.origin == CURATED for ex in train) else 1.0
    weights = np.array([(hyper.dev_weight if ex.origin == CURATED else sampled)
                        * (1.0 if ex.net else hyper.outside_weight) for ex in train])  # fmt: skip

    def logistic() -> LogisticRegression:
        return LogisticRegression(
            C=hyper.C, class_weight=hyper.class_weight, solver="liblinear", random_state=SEED,
            max_iter=1000,
        )  # fmt: skip

    model = logistic().fit(x, y, sample_weight=weights)
    coef = model.coef_[0].copy()
    intercept = float(model.intercept_[0])
    if not (hyper.ensemble_words and keys):
        return Fitted(hyper, vectorizer, keys, coef, intercept, (model,))
    # The clause model ranks the top of the net well; the words model orders its middle better
    # (round 2 of issue 17). Averaged: the words' weights, half of each clause's, the intercepts.
    n_text = len(vectorizer.vocabulary_)
    words = logistic().fit(x[:, :n_text], y, sample_weight=weights)
    coef[:n_text] = (coef[:n_text] + words.coef_[0]) / 2
    coef[n_text:] /= 2
    intercept = (intercept + float(words.intercept_[0])) / 2
    return Fitted(hyper, vectorizer, keys, coef, intercept, (model, words))


def design_matrix(fitted: Fitted, examples: Sequence[Example]) -> Any:
    """The examples as the first member sees them: TF-IDF columns, then clause features."""
    return _matrix(fitted.vectorizer, fitted.clause_keys, examples, fitted.hyper.clause_weight)


def predict(fitted: Fitted, examples: Sequence[Example]) -> Any:
    """The probability of each example, from the one exported weight vector."""
    if not examples:
        return np.zeros(0)
    return expit(
        np.asarray(design_matrix(fitted, examples) @ fitted.coef).ravel() + fitted.intercept
    )


def folds(examples: Sequence[Example], k: int = FOLDS, seed: int = SEED) -> list[Any]:
    """Test indices of k folds, stratified by origin and label (by label alone for an origin
    with fewer than k items of a label)."""
    strata = [f"{ex.origin}{ex.label}" for ex in examples]
    sizes = Counter(strata)
    strata = [s if sizes[s] >= k else str(ex.label) for s, ex in zip(strata, examples, strict=True)]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(strata)), strata)]


def out_of_fold(examples: Sequence[Example], hyper: Hyper, clause_keys: Sequence[str],
                progress: Progress | None = None, *, seed: int = SEED) -> Any:  # fmt: skip
    """Each item's score from the model trained on the other folds of one partition."""
    scores = np.zeros(len(examples))
    for n, test in enumerate(folds(examples, seed=seed), start=1):
        held = set(test.tolist())
        fitted = fit([ex for i, ex in enumerate(examples) if i not in held], hyper, clause_keys)
        scores[test] = predict(fitted, [examples[i] for i in test])
        if progress:
            progress(f"fold {n}/{FOLDS}")
    return scores


# -- measuring -----------------------------------------------------------------------------------


def average_precision(examples: Sequence[Example], scores: Sequence[float] | Any,
                      origins: frozenset[str] | None = None) -> float:  # fmt: skip
    """Average precision of what the rule caught, ranked by score (items outside the net rank
    last), over the sure items of ``origins`` (None: every origin). Threshold-free."""
    keep = [i for i, ex in enumerate(examples)
            if not ex.unsure and (origins is None or ex.origin in origins)]  # fmt: skip
    labels = [examples[i].label for i in keep]
    if not any(labels):
        return 0.0
    ranked = [float(scores[i]) if examples[i].net else 0.0 for i in keep]
    return float(average_precision_score(labels, ranked))


@dataclass(frozen=True, slots=True)
class CrossValidation:
    """Out-of-fold scores of several 5-fold partitions of the same items (one seed each), and
    the thresholds chosen on them pooled. One partition's threshold moves with which items share
    a fold (ai-policy's ranged .47-.65 over five seeds in issue 17); pooled, it does not hang on
    one draw. Figures are pooled too: each item counts once per partition (counts are summed)."""

    examples: tuple[Example, ...]
    runs: tuple[Any, ...]  # one array of out-of-fold scores per partition, in PARTITIONS order
    alert: float
    review: float

    @property
    def scores(self) -> Any:
        """The first partition's scores (seed :data:`SEED`)."""
        return self.runs[0]

    def at(self, threshold: float, origins: frozenset[str] | None = None) -> Counts:
        pooled = np.concatenate(self.runs).tolist()
        [found] = curve(self.examples * len(self.runs), pooled, [threshold], origins)
        return found

    def rules_alone(self, origins: frozenset[str] | None = None) -> Counts:
        once = counts(self.examples, [ex.net for ex in self.examples], origins)
        n = len(self.runs)
        return Counts(once.tp * n, once.fp * n, once.fn * n)

    def as_dict(self, origins: frozenset[str] | None = None) -> dict[str, Any]:
        sure = [
            ex
            for ex in self.examples
            if not ex.unsure and (origins is None or ex.origin in origins)
        ]
        return {
            "folds": FOLDS, "partitions": list(PARTITIONS[: len(self.runs)]),
            "counts": "summed over the partitions", "items": len(sure),
            "positives": sum(ex.label for ex in sure),
            "thresholds": {"alert": self.alert, "review": self.review},
            "alert": self.at(self.alert, origins).as_dict(),
            "alert_realistic_pool": self.at(self.alert, _sampled(origins)).as_dict(),
            "alert_curated": self.at(self.alert, _curated(origins)).as_dict(),
            "alert_or_review": self.at(self.review, origins).as_dict(),
            "rules_alone": self.rules_alone(origins).as_dict(),
        }  # fmt: skip


def _sampled(origins: frozenset[str] | None) -> frozenset[str]:
    return SAMPLED_POOL if origins is None else SAMPLED_POOL & origins


def _curated(origins: frozenset[str] | None) -> frozenset[str]:
    return frozenset({CURATED}) if origins is None else frozenset({CURATED}) & origins


def cross_validate(examples: Sequence[Example], hyper: Hyper, clause_keys: Sequence[str],
                   progress: Progress | None = None) -> CrossValidation:  # fmt: skip
    """Out-of-fold scores of every partition in :data:`PARTITIONS`, and the thresholds
    :func:`~aggregator.relevance.thresholds.choose_thresholds` picks on them pooled."""
    runs = []
    for n, seed in enumerate(PARTITIONS, start=1):
        say = (lambda line, n=n: progress(f"cross-validation {n}/{len(PARTITIONS)}: {line}")
               ) if progress else None  # fmt: skip
        runs.append(out_of_fold(examples, hyper, clause_keys, say, seed=seed))
    alert, review = choose_thresholds(list(examples) * len(runs), np.concatenate(runs).tolist())
    return CrossValidation(tuple(examples), tuple(runs), alert, review)


# -- export --------------------------------------------------------------------------------------


def hashed_id(item_id: str) -> str:
    """A short, fixed-size name for a training item, kept in the model file so that a later
    retrain can tell which items the model never saw."""
    return hashlib.sha256(item_id.encode()).hexdigest()[:16]


def data_digest(items: Sequence[LabelledItem]) -> str:
    """sha256 over what training reads of each item, in a stable order."""
    h = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.id):
        doc = item.document
        record = [item.id, doc.title, doc.summary, item.label, item.unsure]
        h.update(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def export(fitted: Fitted, topic: TopicRules, examples: Sequence[Example],
           items: Sequence[LabelledItem], cv: CrossValidation) -> dict[str, Any]:  # fmt: skip
    """The model as plain values: the terms, their idf and their weights folded with the idf."""
    coef = fitted.coef
    idf = fitted.vectorizer.idf_
    vocabulary = sorted(fitted.vectorizer.vocabulary_.items())
    n_text = len(vocabulary)
    clauses = {key: float(coef[n_text + k] * fitted.hyper.clause_weight)
               for k, key in enumerate(fitted.clause_keys)}  # fmt: skip
    origins = {o: sum(1 for ex in examples if ex.origin == o) for o in (SAMPLED, CURATED, TEAM)}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "topic": topic.name,
        "query_sha256": rules_sha256(topic.query, topic.exclude),
        "training_data": {
            "sha256": data_digest(items),
            "items": len(examples),
            "positives": sum(ex.label for ex in examples),
            "origins": {o: n for o, n in origins.items() if n},
            "ids": sorted({hashed_id(ex.id) for ex in examples}),
        },
        "hyperparameters": asdict(fitted.hyper),
        "features": {
            "terms": TERMS_RECIPE,
            "terms_used": "words and title words"
            + (" and the title words' character 4-grams" if fitted.hyper.title_chars else ""),
            "tf": "1 + ln(count)" if fitted.hyper.sublinear_tf else "count",
            "norm": "l2 over the terms in the vocabulary",
        },
        "intercept": fitted.intercept,
        "thresholds": {"alert": cv.alert, "review": cv.review},
        "cv": cv.as_dict(),
        "clauses": clauses,
        # three parallel columns (not a term -> pair map), the numbers as packed doubles: they
        # load into far less memory
        "terms": [t for t, _ in vocabulary],
        "idf": encode_doubles([float(idf[j]) for _, j in vocabulary]),
        "weights": encode_doubles([float(coef[j] * idf[j]) for _, j in vocabulary]),
    }


def write_atomically(path: Path, doc: dict[str, Any]) -> int:
    """Write the model beside its final name, then rename: a reader sees the old file or the new
    one, never half of one. Returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


# -- the command -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainResult:
    topic: str
    path: Path
    written: bool
    verdict: str  # why the model was written or refused, in one sentence
    cv: CrossValidation
    cv_without_team: CrossValidation | None = None  # the same, without the database's labels
    hyper: Hyper = field(default_factory=Hyper)
    terms: int = 0
    size: int = 0
    seconds: float = 0.0


def current_model(path: Path) -> tuple[dict[str, Any], Hyper] | None:
    """The model file already at ``path`` and its settings; None when there is none. Raises
    ModelError when it cannot be read: replacing it then takes --force."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_bytes())
        RelevanceModel.from_dict(doc, str(path))
        return doc, Hyper(**doc["hyperparameters"])
    except ModelError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(str(path), f"cannot read the current model: {e}") from e


def train_topic(
    topic: TopicRules,
    items: Sequence[LabelledItem],
    out: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Cross-validate, choose thresholds, compare with the model at ``out`` and write unless it
    scores better on held-out items. ``settings``: :class:`Hyper` fields to change from the
    current model's settings (from the defaults when there is none). Raises TrainingDataError,
    ModelError (the current model cannot be read: pass ``force``)."""
    from aggregator.errors import TrainingDataError

    started = time.perf_counter()
    say = progress or (lambda _: None)
    positives = sum(1 for i in items if i.label)
    if positives < FOLDS or len(items) - positives < FOLDS:
        raise TrainingDataError(
            f"topic {topic.name!r}: {positives} relevant and {len(items) - positives} not "
            f"relevant items; training needs at least {FOLDS} of each"
        )
    try:
        existing = current_model(out)
    except ModelError:
        if not force:
            raise
        existing = None
    # a retrain keeps the settings of the model it replaces, but those it is told to change
    hyper = replace(existing[1] if existing else Hyper(), **(settings or {}))
    matcher = TopicMatcher.compile([topic])
    keys = clause_columns(matcher, topic.name)
    say(f"features of {len(items)} items")
    examples = examples_for(items, topic.name, matcher, progress)
    cv = cross_validate(examples, hyper, keys, progress)
    cv_without = None
    if any(ex.origin == TEAM for ex in examples):
        own = [ex for ex in examples if ex.origin != TEAM]
        if sum(ex.label for ex in own) >= FOLDS and sum(1 - ex.label for ex in own) >= FOLDS:
            say("cross-validation without the database's labels")
            cv_without = cross_validate(own, hyper, keys, progress)
    verdict = "written (--force)" if force and existing else "written"
    if existing is not None and not force:
        verdict, worse = _compare(existing, hyper, cv, items, examples, keys, say)
        if worse:
            return TrainResult(topic.name, out, False, verdict, cv, cv_without, hyper,
                               seconds=time.perf_counter() - started)  # fmt: skip
    say("fitting on every item")
    fitted = fit(examples, hyper, keys)
    doc = export(fitted, topic, examples, items, cv)
    size = write_atomically(out, doc)
    return TrainResult(topic.name, out, True, verdict, cv, cv_without, hyper, len(doc["terms"]),
                       size, time.perf_counter() - started)  # fmt: skip


def _compare(
    existing: tuple[dict[str, Any], Hyper],
    hyper: Hyper,
    cv: CrossValidation,
    items: Sequence[LabelledItem],
    examples: Sequence[Example],
    keys: Sequence[str],
    say: Progress,
) -> tuple[str, bool]:
    """Whether the candidate ranks worse than the current model on held-out items, and why.

    On the labelled items the current model never saw (when there are enough), its own scores
    against the candidate's out-of-fold scores. Otherwise, when the settings differ, the current
    settings cross-validated on the same folds of the same labels, on the items thresholds are
    chosen on (:func:`threshold_pool`). Judged by :func:`average_precision`: it needs no
    threshold, so neither side is favoured by a threshold chosen on the very scores it is judged
    on (an F1 check refused an identical model for that reason in round 2 of issue 17).
    """
    doc, old_hyper = existing
    ids = doc["training_data"].get("ids")
    seen = frozenset(ids) if isinstance(ids, list) else None
    unseen = [i for i, ex in enumerate(examples)
              if seen is not None and not ex.unsure and hashed_id(ex.id) not in seen]  # fmt: skip
    labels = {examples[i].label for i in unseen}
    if len(unseen) >= MIN_UNSEEN and labels == {0, 1}:
        old = RelevanceModel.from_dict(doc, "current model")
        part = [examples[i] for i in unseen]
        old_scores = [old.score(items[i].document, _keys_of(ex), matched=True)
                      for i, ex in zip(unseen, part, strict=True)]  # fmt: skip
        before = average_precision(part, old_scores)
        after = average_precision(part, [cv.scores[i] for i in unseen])
        where = f"on the {len(unseen)} labelled items the current model never saw"
    elif old_hyper != hyper:
        say("cross-validation of the current model's settings on the same folds")
        pool = threshold_pool(examples)
        before = average_precision(examples, out_of_fold(examples, old_hyper, keys), pool)
        after = average_precision(examples, cv.scores, pool)
        where = "with the current model's settings on the same folds"
    else:
        return "written (same settings, and no labelled item the current model never saw)", False
    if after < before - 1e-9:
        return (f"refused: the current model scores better {where} (average precision "
                f"{before:.3f} against {after:.3f}); use --force to replace it"), True  # fmt: skip
    return (f"written: average precision {after:.3f} against the current model's {before:.3f} "
            f"{where}"), False  # fmt: skip


def _keys_of(ex: Example) -> list[str]:
    return [c.removeprefix(CLAUSE_PREFIX) for c in ex.clauses if c != MATCHED]
