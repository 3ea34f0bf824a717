"""The feedparser speed-ups change no result, and apply in the parse workers only.

This process tunes itself as a parse worker does (``tune_parser``); a subprocess that imports only
feedparser is not tuned. Both parse the same files, told a feed URL and not, and every key, value
and type of every result must agree. A process that merely imports the package keeps feedparser
as shipped; another feedparser version is reported once by the service and by the doctor.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
import types
import xml.sax
from pathlib import Path

import feedparser
import pytest

from aggregator.ingest import tuning as parse_tuning
from aggregator.ingest.parse import tune_parser, tuning_off_reason
from aggregator.ingest.workers import ParseJob, ParsePool, run_job
from aggregator.models import ParsedFeed, ParseOutcome
from bench.corpus import build_corpus, render
from tests.configs import link_models
from tests.feedparser_results import canonical, results
from tests.feedserver import FeedServer

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
URL = "http://example.org/feeds/main.xml"
RSS = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
    b"<item><guid>g1</guid><title>One</title><link>https://example.org/1</link></item>"
    b"</channel></rss>"
)


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
    assert tune_parser()  # as a parse worker does when it starts
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
    assert tuning_off_reason() is None
    assert tune_parser()
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
    reason = parse_tuning.untuned_reason("6.1.0")
    assert reason is not None and "feedparser 6.1.0 is installed" in reason
    assert "checked against 6.0.14 only" in reason and "1.5 to 1.8 times as long" in reason


def test_importing_the_package_leaves_feedparser_as_shipped() -> None:
    # Every entry point imports the parser; none of them may patch feedparser by doing so. Only a
    # pool that parses in this process (one worker) tunes it, when it starts parsing.
    script = textwrap.dedent(
        f"""
        import json
        import aggregator.admin.doctor, aggregator.admin.feeds, aggregator.cli.main
        import aggregator.ingest.workers, aggregator.pipeline, aggregator.service.serve
        from aggregator.ingest.workers import ParseJob, ParsePool
        import feedparser

        def state():
            tuned = getattr(feedparser, "_aggregator_tuned", False)
            return [tuned, "{parse_tuning.__name__}" in feedparser.api.PREFERRED_XML_PARSERS]

        imported = state()
        job = ParseJob("{URL}", {RSS!r}, "", "", ())
        assert [key for key, _ in ParsePool(1).parse_stream([(0, job)])] == [0]
        print(json.dumps([imported, state()]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(out.stdout) == [[False, False], [True, True]]


def _parse_if_tuned(job: ParseJob) -> ParseOutcome:
    """A pool runner that refuses to parse with feedparser as shipped."""
    if not getattr(feedparser, "_aggregator_tuned", False):
        raise RuntimeError("feedparser is not tuned in this parse worker")
    return run_job(job)


def test_every_parse_worker_is_tuned() -> None:
    jobs = [(n, ParseJob(f"{URL}?{n}", RSS, "", "", ())) for n in range(8)]
    with ParsePool(workers=2, runner=_parse_if_tuned) as pool:
        outcomes = dict(pool.parse_stream(jobs))
    assert all(isinstance(outcome, ParsedFeed) for outcome in outcomes.values()), outcomes
    assert outcomes == {n: run_job(job) for n, job in jobs}


def test_another_feedparser_version_is_said_once_in_the_log_and_in_the_doctor(
    tmp_path: Path,
) -> None:
    # Every interpreter on this path, the workers too, sees feedparser report another version.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        'import feedparser\nfeedparser.__version__ = "6.1.0"\n', encoding="utf-8"
    )
    config = tmp_path / "config"
    config.mkdir()
    (config / "aggregator.toml").write_text(
        "[fetch]\nparse_workers = 2\nallow_private = true\n", encoding="utf-8"
    )
    topics = (ROOT / "config" / "topics.toml").read_text(encoding="utf-8")
    (config / "topics.toml").write_text(topics, encoding="utf-8")
    link_models(config)
    db = tmp_path / "bot.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AGGREGATOR_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT)])
    base = [sys.executable, "-m", "aggregator", "--config", str(config), "--db", str(db)]
    with FeedServer() as server:
        feeds = "".join(
            f'[[feeds]]\nurl = "{server.serve(f"/{n}.xml", RSS)}"\nname = "F{n}"\n'
            for n in range(6)
        )
        (config / "feeds.toml").write_text(feeds, encoding="utf-8")
        poll = subprocess.run(
            [*base, "poll", "--once"], capture_output=True, text=True, env=env, timeout=120
        )
    assert poll.returncode == 0, poll.stderr
    said = [line for line in poll.stderr.splitlines() if "feedparser tuning is off" in line]
    assert len(said) == 1, poll.stderr
    assert "feedparser 6.1.0 is installed" in said[0] and "WARNING" in said[0]
    with sqlite3.connect(db) as conn:  # parsed all the same, by untuned workers
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (6,)

    doctor = subprocess.run([*base, "doctor"], capture_output=True, text=True, env=env, timeout=60)
    lines = [line for line in doctor.stdout.splitlines() if "feedparser tuning is off" in line]
    assert lines == [f"ok      parsing: {parse_tuning.untuned_reason('6.1.0')}"], doctor.stdout


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
