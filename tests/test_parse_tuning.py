"""The feedparser speed-ups change no result: a tuned process against an untuned one.

``aggregator.parse`` tunes feedparser when it is imported, so this process is tuned; a
subprocess that imports only feedparser is not. Both parse the same files, told a feed URL and
not, and every key, value and type of every result must agree.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tomllib
import types
import xml.sax
from pathlib import Path

import feedparser
import pytest

import aggregator.ingest.parse  # noqa: F401  (tunes feedparser)
from aggregator.ingest import tuning as parse_tuning
from bench.corpus import build_corpus, render
from tests.feedparser_results import canonical, results

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
URL = "http://example.org/feeds/main.xml"


def assert_same_results(paths: list[Path]) -> None:
    jobs = [(str(p), location) for p in paths for location in (URL, "")]
    untuned = subprocess.Popen(  # runs on the other core while this process parses
        [sys.executable, str(ROOT / "tests" / "feedparser_results.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert untuned.stdin is not None
    untuned.stdin.write(json.dumps(jobs))
    untuned.stdin.close()
    tuned = results(jobs)
    assert untuned.stdout is not None
    expected = json.loads(untuned.stdout.read())
    assert untuned.wait() == 0
    assert len(tuned) == len(expected) == len(jobs)
    differing = [key for key in tuned if tuned[key] != expected[key]]
    assert differing == [], f"{len(differing)} results differ, first: {differing[:3]}"


def test_the_pinned_feedparser_is_tuned() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("feedparser")]
    assert pins == [f"feedparser=={parse_tuning.TUNED_VERSION}"], (
        "feedparser's pin moved: check parse_tuning against the new version's internals"
    )
    assert feedparser.__version__ == parse_tuning.TUNED_VERSION
    assert getattr(feedparser, "_aggregator_tuned", False)
    assert parse_tuning.__name__ in feedparser.api.PREFERRED_XML_PARSERS
    # the driver really loads: a failed import would silently fall back to plain expat
    sax_parser = xml.sax.make_parser(feedparser.api.PREFERRED_XML_PARSERS)  # noqa: S317  (no input)
    assert isinstance(sax_parser, parse_tuning._BufferedExpatParser)
    assert parse_tuning.tune(feedparser)  # a second time: nothing more
    assert feedparser.api.PREFERRED_XML_PARSERS.count(parse_tuning.__name__) == 1


def test_another_version_is_left_alone() -> None:
    other = types.ModuleType("feedparser")
    other.__version__ = "6.1.0"  # type: ignore[attr-defined]
    assert parse_tuning.tune(other) is False
    assert not hasattr(other, "_aggregator_tuned")


def test_a_parameter_that_is_not_plain_is_still_deep_copied() -> None:
    copier = parse_tuning._CopyModule(feedparser.FeedParserDict)
    plain = feedparser.FeedParserDict({"type": "text/html", "language": None, "base64": 0})
    nested = feedparser.FeedParserDict({"type": "text/html", "links": [{"href": "x"}]})
    plain_copy, nested_copy = copier.deepcopy(plain), copier.deepcopy(nested)
    assert type(plain_copy) is feedparser.FeedParserDict and plain_copy == plain
    assert plain_copy is not plain
    assert nested_copy == nested and nested_copy["links"] is not nested["links"]
    assert copier.copy is copy.copy  # everything else is the real module


def test_aliased_keys_keep_feedparser_behaviour() -> None:
    entry = feedparser.FeedParserDict()
    entry["modified"] = "then"  # an alias: stored under its real name
    entry["tags"] = [feedparser.FeedParserDict(term="ai")]
    assert dict.get(entry, "updated") == "then" and "modified" not in dict.keys(entry)
    assert entry["modified"] == entry.get("modified") == entry.get("updated") == "then"
    assert "modified" in entry and entry.modified == "then"
    assert entry["category"] == entry.get("category") == "ai" and "category" in entry
    assert entry.get("missing", 7) == 7 and "missing" not in entry
    with pytest.raises(KeyError):
        entry["missing"]


def test_bench_feeds_parse_the_same_tuned(tmp_path: Path) -> None:
    paths = []
    for number, feed in enumerate(build_corpus(40)):
        path = tmp_path / f"{number}.xml"
        path.write_bytes(render(feed))
        paths.append(path)
    assert_same_results(paths)


@pytest.mark.skipif(
    not SHARED_CORPUS.is_dir(), reason=f"the shared corpus is absent ({SHARED_CORPUS})"
)
def test_shared_corpus_parses_the_same_tuned() -> None:
    paths = sorted(
        p
        for folder in ("feedparser-tests", "real-feeds")
        for p in (SHARED_CORPUS / folder).rglob("*")
        if p.is_file() and p.suffix not in {".md", ".csv"}
    )
    assert len(paths) > 2000
    assert_same_results(paths)


def test_canonical_form_sees_differences() -> None:
    # The comparison above is only as strong as this: types, nesting and values all count.
    a = feedparser.FeedParserDict(title="x", tags=[{"term": "a"}])
    assert canonical(a) != canonical(dict(a))
    assert canonical(a) != canonical(feedparser.FeedParserDict(title="x", tags=[{"term": "b"}]))
    assert canonical(ValueError("a")) != canonical(KeyError("a"))
