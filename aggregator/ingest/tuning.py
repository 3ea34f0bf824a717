"""feedparser 6.0.14, made faster without changing a single result: part of the parse edge.

feedparser is most of a cold cycle's CPU. Four of its internal costs have nothing to do with the
result, and :func:`tune` removes them in the process that parses:

1. expat hands over each run of text in one call, instead of one per line and per entity.
2. ``FeedParserDict``'s ``[]``, ``get``, ``in`` and ``[]=`` go straight to ``dict`` for keys that
   have no alias; aliased keys keep feedparser's own logic.
3. Content parameters (strings, numbers and None only) are copied shallowly, not by
   ``copy.deepcopy``'s generic machinery.
4. URL joins against an element's base are memoised: every start tag joins the same two strings.

Together they take 0.66-0.68 of the time, or 0.55-0.57 when feedparser is told the feed's URL
(``bench/bench_parse_tuning.py``, 500 bench feeds, two runs). Every result is the same,
compared over feedparser's own test fixtures, the real feed snapshots and the bench corpus
(``tests/test_parse_tuning.py``). The changes reach into feedparser's internals, so they apply to
the pinned version only; any other version runs untuned, slower but correct, and the service says
so once as it starts (and ``aggregator doctor`` too): see :func:`untuned_reason`.

Only :mod:`aggregator.ingest.parse` imports feedparser; its ``tune_parser`` hands the package to
:func:`tune`, in each parse worker as it starts, never on import.
"""

from __future__ import annotations

import copy
import functools
from types import ModuleType
from typing import Any
from xml.sax import expatreader

TUNED_VERSION = "6.0.14"
_URL_JOINS_CACHED = 256
# Keys FeedParserDict treats specially in __getitem__, besides those of its keymap.
_SPECIAL_KEYS = frozenset({"category", "enclosures", "license", "updated", "updated_parsed"})
_ATOMIC = (str, int, float, bool, type(None))


def tune(feedparser: ModuleType) -> bool:
    """Apply the speed-ups to this feedparser package; False (and nothing changed) for a version
    other than the one they were checked against. Applying twice changes nothing more."""
    if untuned_reason(getattr(feedparser, "__version__", None)) is not None:
        return False
    if getattr(feedparser, "_aggregator_tuned", False):
        return True
    _buffer_text(feedparser.api)
    _fast_dict(feedparser.util.FeedParserDict)
    _shallow_content_params(feedparser.mixin, feedparser.util.FeedParserDict)
    _memoise_url_joins(feedparser.mixin)
    setattr(feedparser, "_aggregator_tuned", True)  # noqa: B010  (a module: no typed attribute)
    return True


def untuned_reason(version: str | None) -> str | None:
    """None when :func:`tune` applies to this feedparser version, else why parsing is slower."""
    if version == TUNED_VERSION:
        return None
    return (
        f"the feedparser tuning is off: feedparser {version or '(version unknown)'} is installed "
        f"and the tuning was checked against {TUNED_VERSION} only; parsing gives the same results "
        "but takes about 1.5 to 1.8 times as long (install the pinned version to get it back)"
    )


# -- 1. expat: one call per run of text ---------------------------------------------------------


class _BufferedExpatParser(expatreader.ExpatParser):
    def reset(self) -> None:
        super().reset()
        # feedparser joins an element's text runs anyway: one call for all of them, not one per line
        self._parser.buffer_text = True  # type: ignore[attr-defined]


def create_parser(*args: Any, **kwargs: Any) -> expatreader.ExpatParser:
    """The SAX driver entry point: ``xml.sax.make_parser`` imports this module by name."""
    return _BufferedExpatParser(*args, **kwargs)


def _buffer_text(api: ModuleType) -> None:
    # feedparser asks xml.sax for the first driver of this list that imports; this module is one.
    api.PREFERRED_XML_PARSERS[:0] = [__name__]


# -- 2. FeedParserDict: plain keys are plain dict look-ups -----------------------------------------


def _fast_dict(cls: Any) -> None:
    aliased = _SPECIAL_KEYS | frozenset(cls.keymap)
    keymap = cls.keymap
    slow_getitem, slow_get, slow_contains = cls.__getitem__, cls.get, cls.__contains__
    slow_setitem = cls.__setitem__

    def __getitem__(self: Any, key: Any) -> Any:
        if key in aliased:
            return slow_getitem(self, key)
        return dict.__getitem__(self, key)

    def get(self: Any, key: Any, default: Any = None) -> Any:
        if key in aliased:
            return slow_get(self, key, default)
        return dict.get(self, key, default)

    def __contains__(self: Any, key: Any) -> bool:
        if key in aliased:
            return bool(slow_contains(self, key))
        return dict.__contains__(self, key)

    def __setitem__(self: Any, key: Any, value: Any) -> None:
        if key in keymap:
            slow_setitem(self, key, value)
        else:
            dict.__setitem__(self, key, value)

    cls.__getitem__, cls.get, cls.__contains__ = __getitem__, get, __contains__
    cls.__setitem__ = __setitem__


# -- 3. content parameters: a shallow copy when every value is immutable --------------------------


class _CopyModule:
    """Stands in for the ``copy`` module inside feedparser's mixin."""

    def __init__(self, dict_type: type[dict[Any, Any]]) -> None:
        self._dict_type = dict_type

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        if (
            type(value) is self._dict_type
            and not vars(value)
            and all(type(v) in _ATOMIC for v in dict.values(value))
        ):
            duplicate = self._dict_type()
            dict.update(duplicate, value)
            return duplicate
        return copy.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


def _shallow_content_params(mixin: ModuleType, dict_type: type[dict[Any, Any]]) -> None:
    setattr(mixin, "copy", _CopyModule(dict_type))  # noqa: B010


# -- 4. URL joins: pure functions of two strings, memoised ----------------------------------------


def _memoise_url_joins(mixin: ModuleType) -> None:
    for name in ("_urljoin", "make_safe_absolute_uri"):
        setattr(mixin, name, functools.lru_cache(maxsize=_URL_JOINS_CACHED)(getattr(mixin, name)))
