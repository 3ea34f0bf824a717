"""A topic's relevance model, loaded from its exported file and scored in pure Python.

No numpy, scipy or scikit-learn here: the service loads and scores models without them. A model
file (written by :mod:`aggregator.relevance.train`) holds, per known term, its idf and its
logistic-regression weight already multiplied by the idf (``terms``, ``idf``, ``weights``: three
parallel lists); the weight of each clause feature; the
intercept and the thresholds. The score equals scikit-learn's ``predict_proba`` for the item::

    x_t   = tf_t * idf_t           tf_t = 1 + ln(count of t)   (terms outside the vocabulary: 0)
    z     = intercept + sum_t tf_t * folded_t / ||x|| + sum of the weights of the clauses held
    score = 1 / (1 + exp(-z))

Memory: the term -> row index is one dict shared by every model loaded with the same
:class:`Vocabularies`, over the union of their vocabularies (the shipped topics' overlap: one adds
the title's character grams to the other's words); each model adds two ``array('d')`` of its own
(idf and weight per row), holding 0 where a term is not in its vocabulary.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import sys
from array import array
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aggregator.errors import ModelError
from aggregator.models import Document
from aggregator.relevance.features import (
    CHAR_PREFIX,
    CLAUSE_PREFIX,
    MATCHED,
    TERMS_RECIPE,
    TITLE_PREFIX,
    item_terms,
)

FORMAT = "aggregator-relevance-model"
# 2: the terms recipe (features.TERMS_RECIPE) is recorded, and must be the one computed here.
# 1: words only, as round 1 of issue 17 trained them; still scored exactly, since the terms added
# since (the title's character grams) are outside its vocabulary and so ignored.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MODELS_DIR = "models"  # beside topics.toml

Tier = Literal["alert", "review", "none"]


def default_model_path(config_dir: Path, topic: str) -> Path:
    """Where ``aggregator train`` writes a topic's model unless told otherwise:
    ``models/TOPIC.json`` in the config directory, beside topics.toml."""
    return config_dir / MODELS_DIR / f"{topic}.json"


def rules_sha256(query: str, exclude: str | None) -> str:
    """The digest of a topic's rules as a model records them: comments included, since clause
    labels name the model's clause features."""
    return hashlib.sha256(f"{query}\n--exclude--\n{exclude or ''}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``score >= alert``: alert now; ``review <= score < alert``: the digest, as possibly
    relevant; below: nothing. ``review == alert`` means no review tier."""

    alert: float
    review: float

    def tier(self, score: float) -> Tier:
        if score >= self.alert:
            return "alert"
        return "review" if score >= self.review else "none"


class Vocabularies:
    """One term -> row index for the models of one config: a term is stored once, whichever
    models know it. A model's arrays are as long as the index was when it was loaded, with idf
    and weight 0 for a term it does not know: such a term adds nothing to the norm or to the dot
    product, exactly as a term outside its vocabulary. The index only grows, while loading."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def row(self, term: str) -> int:
        found = self.rows.get(term)
        if found is None:
            found = self.rows[term] = len(self.rows)
        return found


class RelevanceModel:
    """One topic's model. Load with :meth:`load`; scoring is pure and thread-safe."""

    __slots__ = (
        "_clauses",
        "_idf",
        "_matched_weight",
        "_rows",
        "_size",
        "_sublinear",
        "_weights",
        "cv",
        "hyperparameters",
        "intercept",
        "path",
        "query_sha256",
        "thresholds",
        "topic",
    )

    def __init__(self, doc: Mapping[str, Any], where: str, vocabularies: Vocabularies) -> None:
        names, idf, weights = _term_columns(doc)
        rows = [vocabularies.row(term) for term in names]
        self._rows = vocabularies.rows
        self._idf = array("d", bytes(8 * len(self._rows)))
        self._weights = array("d", bytes(8 * len(self._rows)))
        for row, term_idf, folded in zip(rows, idf, weights, strict=True):
            if not term_idf > 0.0:  # 0 means "not in the vocabulary"; a real idf is >= 1
                raise ValueError(f"the idf of a term must be positive, not {term_idf}")
            self._idf[row] = term_idf
            self._weights[row] = folded
        self._size = len(rows)
        clauses = {str(k): float(v) for k, v in doc["clauses"].items()}
        self._matched_weight = clauses.pop(MATCHED, 0.0)
        self._clauses = {
            k.removeprefix(CLAUSE_PREFIX): v
            for k, v in clauses.items()
            if k.startswith(CLAUSE_PREFIX)
        }
        self._sublinear = doc["hyperparameters"]["sublinear_tf"] is True
        self.topic = str(doc["topic"])
        self.query_sha256 = str(doc["query_sha256"])
        self.intercept = float(doc["intercept"])
        self.thresholds = Thresholds(
            float(doc["thresholds"]["alert"]), float(doc["thresholds"]["review"])
        )
        self.hyperparameters: dict[str, Any] = dict(doc["hyperparameters"])
        self.cv: dict[str, Any] = dict(doc.get("cv") or {})
        self.path = where

    @classmethod
    def load(
        cls, path: Path, topic: str | None = None, *, vocabularies: Vocabularies | None = None
    ) -> RelevanceModel:
        """Read and check a model file. Raises :class:`ModelError` naming the file and what is
        wrong: unreadable, not a model, an unsupported version, another topic, or malformed.
        Pass one ``vocabularies`` to every load of a config so that models share vocabularies."""
        try:
            doc = json.loads(path.read_bytes())
        except OSError as e:
            raise ModelError(str(path), f"cannot read the model: {e.strerror or e}") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(str(path), f"not a relevance model (not valid JSON: {e})") from e
        return cls.from_dict(doc, str(path), topic, vocabularies=vocabularies)

    @classmethod
    def from_dict(
        cls,
        doc: object,
        where: str,
        topic: str | None = None,
        *,
        vocabularies: Vocabularies | None = None,
    ) -> RelevanceModel:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ModelError(where, f'not a relevance model (no "format": {FORMAT!r})')
        version = doc.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            supported = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise ModelError(
                where,
                f"format_version {version!r} is not supported (this aggregator reads "
                f"{supported}): retrain it with `aggregator train`",
            )
        features = doc.get("features")
        recipe = features.get("terms") if isinstance(features, dict) else None
        if version >= 2 and recipe != TERMS_RECIPE:
            raise ModelError(
                where,
                f"trained on the terms {recipe!r}, but this aggregator computes {TERMS_RECIPE!r}: "
                "retrain it with `aggregator train`",
            )
        if topic is not None and doc.get("topic") != topic:
            raise ModelError(where, f"a model of topic {doc.get('topic')!r}, not of {topic!r}")
        try:
            model = cls(doc, where, vocabularies or Vocabularies())
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ModelError(where, f"malformed model: {type(e).__name__}: {e}") from e
        alert, review = model.thresholds.alert, model.thresholds.review
        if not 0.0 <= review <= alert <= 1.0:
            raise ModelError(
                where,
                f"thresholds must satisfy 0 <= review <= alert <= 1 (review {review}, "
                f"alert {alert})",
            )
        if not all(math.isfinite(w) for w in model._weights) or not math.isfinite(model.intercept):
            raise ModelError(where, "malformed model: a weight is not a finite number")
        return model

    # -- what it was trained for -----------------------------------------------------------

    def trained_on_rules(self, query: str, exclude: str | None) -> bool:
        """Whether the topic's rules are still those the model was trained with. When not,
        its clause features may have changed meaning: retrain it."""
        return rules_sha256(query, exclude) == self.query_sha256

    @property
    def terms(self) -> int:
        """How many terms its vocabulary holds."""
        return self._size

    # -- scoring ---------------------------------------------------------------------------

    def score(self, doc: Document, clauses: Collection[str], *, matched: bool = True) -> float:
        """The probability that ``doc`` is relevant to the topic, given the clause keys of its
        query that held (:attr:`~aggregator.models.TopicMatch.clauses`). ``matched``: whether
        the topic's rule matched it, as for every item the service scores."""
        return self.score_terms(item_terms(doc), clauses, matched=matched)

    def score_terms(
        self, counts: Counter[str], clauses: Collection[str], *, matched: bool = True
    ) -> float:
        """As :meth:`score`, from :func:`~aggregator.relevance.features.item_terms`, which is
        the same for every topic: compute it once when several topics score one item."""
        z = self._decision(counts, clauses, matched)
        if z >= 0:  # the logistic function, written so that exp never overflows
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def _decision(self, counts: Counter[str], clauses: Collection[str], matched: bool) -> float:
        squares = 0.0
        dot = 0.0
        get = self._rows.get
        idf, weights = self._idf, self._weights
        size = len(idf)  # rows added by models loaded after this one are not its terms
        sublinear = self._sublinear
        for term, count in counts.items():
            row = get(term, size)
            if row >= size:
                continue
            if count == 1:  # most terms: tf is 1 either way
                squares += idf[row] * idf[row]
                dot += weights[row]
            else:
                tf = 1.0 + math.log(count) if sublinear else float(count)
                squares += (tf * idf[row]) ** 2
                dot += tf * weights[row]
        z = self.intercept + (dot / math.sqrt(squares) if squares > 0.0 else 0.0)
        known = self._clauses
        for key in set(clauses):
            z += known.get(key, 0.0)
        return z + (self._matched_weight if matched else 0.0)

    def movers(
        self, doc: Document, clauses: Collection[str], n: int = 5, *, matched: bool = True
    ) -> list[tuple[str, float]]:
        """The ``n`` features that moved the score most, with their signed contribution to the
        log-odds, largest first: words and word pairs as written lower-case ("executive
        order"), title words as ``title:word``, four letters of a title word as ``letters:<ban``
        (``<`` marks the start of the word, ``>`` its end), clauses as ``clause 2a``, the verdict
        as ``rule matched``."""
        idf, size = self._idf, len(self._idf)
        known: list[tuple[str, float, int]] = []
        for term, count in item_terms(doc).items():
            row = self._rows.get(term, size)
            if row < size and idf[row] > 0.0:
                tf = 1.0 + math.log(count) if self._sublinear else float(count)
                known.append((term, tf, row))
        norm = math.sqrt(sum((tf * idf[row]) ** 2 for _, tf, row in known)) or 1.0
        parts = [(_shown(term), tf * self._weights[row] / norm) for term, tf, row in known]
        parts += [
            (f"clause {k}", self._clauses[k]) for k in sorted(set(clauses)) if k in self._clauses
        ]
        if matched and self._matched_weight:
            parts.append(("rule matched", self._matched_weight))
        parts.sort(key=lambda p: (-abs(p[1]), p[0]))
        return parts[:n]


def _term_columns(doc: Mapping[str, Any]) -> tuple[list[str], array[float], array[float]]:
    """The terms, their idf and their weights folded with the idf, as three columns.

    Version 2 stores them so: three parallel lists, which JSON parses into few objects (loading
    round 2's two models took 14.6 MB of RSS from a term -> [idf, weight] map, 3.2 MB from
    columns: the service's whole budget is 150 MB). The numbers may be JSON lists or, as
    ``train`` writes them, :func:`encode_doubles` text, which makes no float object at all
    while loading. Version 1 stores the map."""
    if doc["format_version"] == 1:
        pairs = doc["terms"]
        names = [str(term) for term in pairs]
        return (
            names,
            array("d", [v[0] for v in pairs.values()]),
            array("d", [v[1] for v in pairs.values()]),
        )
    names = doc["terms"]
    if not isinstance(names, list) or not all(isinstance(term, str) for term in names):
        raise TypeError("terms must be a list of strings")
    idf, weights = decode_doubles(doc["idf"]), decode_doubles(doc["weights"])
    if not len(names) == len(idf) == len(weights):
        raise ValueError(f"{len(names)} terms, {len(idf)} idf and {len(weights)} weights")
    return names, idf, weights


def encode_doubles(values: Collection[float]) -> str:
    """Numbers as text that loads exactly and without a float object each: their IEEE doubles,
    little-endian, in base64."""
    packed = array("d", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def decode_doubles(value: Any) -> array[float]:
    """A column of numbers: a JSON list, or :func:`encode_doubles` text."""
    if not isinstance(value, str):
        column: array[float] = array("d", value)  # a TypeError names a bad list
        return column
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError(f"a column of numbers is not valid base64: {e}") from e
    if len(raw) % 8:
        raise ValueError(f"a column of numbers is {len(raw)} bytes, not a multiple of 8")
    column = array("d")
    column.frombytes(raw)
    if sys.byteorder == "big":
        column.byteswap()
    return column


def _shown(term: str) -> str:
    if term.startswith(TITLE_PREFIX):
        return "title:" + term.removeprefix(TITLE_PREFIX)
    if term.startswith(CHAR_PREFIX):
        return "letters:" + term.removeprefix(CHAR_PREFIX)
    return term
