"""Values that parse but cannot work are refused where they are written, with file:line and key.

``check-config`` exits 2 and ``run`` exits 78 on them; a reload refuses them (see test_service).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.config.load import parse_config
from aggregator.config.values import DURATION_RANGES
from aggregator.errors import ConfigError
from tests.configs import link_models

ROOT = Path(__file__).resolve().parents[1]
TOPICS = """\
[topics.ai-policy]
channel = "#ai-policy"
query = 'AI AND regulat*'
"""
FEEDS = """\
[[feeds]]
url = "https://a.example/feed"
"""


def problems(**texts: str) -> list[str]:
    files = {"aggregator.toml": "", "feeds.toml": FEEDS, "topics.toml": TOPICS}
    files |= {f"{name}.toml": text for name, text in texts.items()}
    with pytest.raises(ConfigError) as caught:
        parse_config(files)
    return caught.value.problems


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    db = config.parent / "bot.db"
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    shutil.copy(ROOT / "config" / "topics.toml", directory / "topics.toml")
    link_models(directory)
    (directory / "aggregator.toml").write_text("", encoding="utf-8")
    (directory / "feeds.toml").write_text(FEEDS, encoding="utf-8")
    return directory


# -- durations ------------------------------------------------------------------------------------

# Where each duration key lives: (file, the TOML that opens its table, its key path).
DURATION_KEYS = [
    ("aggregator", "[polling]", "polling.interval"),
    ("aggregator", "[polling]", "polling.first_poll_window"),
    ("aggregator", "[polling]", "polling.jitter"),
    ("aggregator", "[polling]", "polling.cycle_timeout"),
    ("aggregator", "[polling]", "polling.backoff_cap"),
    ("aggregator", '[fetch]\ndeadline = "1h"', "fetch.timeout"),
    ("aggregator", "[fetch]", "fetch.deadline"),
    ("aggregator", "[fetch]", "fetch.failing_after"),
    ("aggregator", "[fetch]", "fetch.parse_timeout"),
    ("aggregator", "[slack]", "slack.per_channel_interval"),
    ("aggregator", "[stories]", "stories.window"),
    ("aggregator", "[stories]", "stories.reply_batch"),
    ("aggregator", "[feedback]", "feedback.window"),
    ("aggregator", "[feedback]", "feedback.read_every"),
    ("feeds", '[[feeds]]\nurl = "https://a.example/feed"', "feeds[0].interval"),
    ("topics", TOPICS.rstrip("\n"), "topics.ai-policy.digest_every"),
]


def test_every_duration_key_is_checked() -> None:
    """The table of ranges and this test's list name the same keys: a new key is not forgotten."""
    assert sorted(DURATION_RANGES) == sorted(
        path.replace("[0]", "[]").replace("ai-policy", "*") for _, _, path in DURATION_KEYS
    )


@pytest.mark.parametrize(("file", "table", "path"), DURATION_KEYS)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", '"999999999999d"', "1e300"])
def test_a_duration_that_is_not_finite_or_absurd_is_refused_with_file_line_and_key(
    file: str, table: str, path: str, value: str
) -> None:
    key = path.rsplit(".", 1)[-1]
    text = f"# a comment\n{table}\n{key} = {value}\n"
    line = text.count("\n")  # the key is on the last line
    found = problems(**{file: text})
    prefix = f"{file}.toml:{line}: {path}: "
    assert [p for p in found if p.startswith(prefix)], found
    message = next(p for p in found if p.startswith(prefix))
    assert "finite" in message or "at most" in message, message


@pytest.mark.parametrize(("file", "table", "path"), DURATION_KEYS)
def test_the_upper_end_of_every_range_is_accepted(file: str, table: str, path: str) -> None:
    key = path.rsplit(".", 1)[-1]
    high = DURATION_RANGES[path.replace("[0]", "[]").replace("ai-policy", "*")][1]
    parse_config(
        {"aggregator.toml": "", "feeds.toml": FEEDS, "topics.toml": TOPICS}
        | {f"{file}.toml": f"{table}\n{key} = {high}\n"}
    )


def test_retention_days_is_bounded_too() -> None:
    found = problems(aggregator="[storage]\nretention_days = 999999999999\n")
    assert found[0].startswith("aggregator.toml:2: storage.retention_days: must be at most")


def test_check_config_exits_2_and_run_exits_78_on_an_infinite_feed_interval(
    config_dir: Path,
) -> None:
    (config_dir / "feeds.toml").write_text(FEEDS + "interval = inf\n", encoding="utf-8")
    checked = cli(config_dir, "check-config")
    assert checked.returncode == 2, checked.stderr
    assert f"{config_dir / 'feeds.toml'}:3: feeds[0].interval: " in checked.stderr
    assert "Traceback" not in checked.stderr

    started = cli(config_dir, "--log-format", "text", "run", timeout=30)
    assert started.returncode == 78, started.stderr
    assert "invalid config, not starting" in started.stderr
    assert f"{config_dir / 'feeds.toml'}:3: feeds[0].interval: " in started.stderr


# -- empty rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["query", "exclude"])
@pytest.mark.parametrize("text", ["''", '""', "'   '", "'# only a comment'"])
def test_an_empty_query_or_exclude_is_refused_with_file_line_and_key(key: str, text: str) -> None:
    topics = TOPICS if key == "exclude" else TOPICS.replace("query = 'AI AND regulat*'\n", "")
    found = problems(topics=f"{topics}{key} = {text}\n")
    line = 4 if key == "exclude" else 3
    assert found[0].startswith(f"topics.toml:{line}: topics.ai-policy.{key}: "), found
    assert "empty" in found[0]


def test_check_config_exits_2_and_run_exits_78_on_an_empty_query(config_dir: Path) -> None:
    (config_dir / "topics.toml").write_text(
        "[topics.ai-policy]\nchannel = \"#ai-policy\"\nquery = ''\n", encoding="utf-8"
    )
    checked = cli(config_dir, "check-config")
    assert checked.returncode == 2, checked.stderr
    assert f"{config_dir / 'topics.toml'}:3: topics.ai-policy.query: " in checked.stderr
    assert "Traceback" not in checked.stderr

    started = cli(config_dir, "--log-format", "text", "run", timeout=30)
    assert started.returncode == 78, started.stderr
    assert f"{config_dir / 'topics.toml'}:3: topics.ai-policy.query: " in started.stderr
    assert "Traceback" not in started.stderr


def test_the_examples_check_reports_a_query_that_does_not_compile_instead_of_raising() -> None:
    from aggregator.config.model import TopicConfig
    from aggregator.rules.matcher import check_examples

    found = check_examples([TopicConfig("ai-policy", "#ai-policy", query="")])
    assert found == ["topics: topic 'ai-policy': the query is empty at column 1"]


# -- deep and huge rules --------------------------------------------------------------------------

HOSTILE_QUERIES = {
    "200 nested groups": "(" * 200 + "tariff" + ")" * 200,
    "a 330-term NEAR chain": " NEAR/5 ".join(f"word{i}" for i in range(330)),
    "1,000 chained NOTs": "NOT " * 1000 + "tariff",
    "NOT and groups mixed": "NOT (" * 300 + "tariff" + ")" * 300,
    "a 50,000-term OR": " OR ".join(f"w{i}" for i in range(50_000)),
    "a 3,000-word OR under the size limit": " OR ".join(f"w{i}" for i in range(3_000)),
    "a 3,000-word phrase": '"' + " ".join(f"w{i}" for i in range(3_000)) + '"',
    "field prefixes chained": "title:" * 3000 + "tariff",
}
LIMITS = {
    "200 nested groups": "more than 32 levels deep",
    "a 330-term NEAR chain": "more than 32 levels deep",
    "1,000 chained NOTs": "more than 32 levels deep",
    "NOT and groups mixed": "more than 32 levels deep",
    "a 50,000-term OR": "longer than 100,000 characters",
    "a 3,000-word OR under the size limit": "more than 2,000 words",
    "a 3,000-word phrase": "more than 2,000 words",
    "field prefixes chained": "'title:' must be followed by a word",
}


@pytest.mark.parametrize("name", HOSTILE_QUERIES)
@pytest.mark.parametrize("key", ["query", "exclude"])
def test_a_query_past_the_limits_is_refused_with_the_limit_named(name: str, key: str) -> None:
    text = HOSTILE_QUERIES[name]
    topics = TOPICS if key == "exclude" else TOPICS.replace("query = 'AI AND regulat*'\n", "")
    found = problems(topics=f"{topics}{key} = '{text}'\n")
    line = 4 if key == "exclude" else 3
    assert len(found) == 1, found
    assert found[0].startswith(f"topics.toml:{line}: topics.ai-policy.{key}: "), found[0][:200]
    assert LIMITS[name] in found[0]
    assert len(found[0]) < 2_000  # the pointer shows the query's line, not a wall of text


def deepest(kind: str) -> str:
    """A query exactly at the depth limit."""
    from aggregator.rules.syntax import MAX_DEPTH

    if kind == "groups":
        return "(" * MAX_DEPTH + "tariff OR levy" + ")" * MAX_DEPTH
    if kind == "near":
        return " NEAR/5 ".join(f"word{i}" for i in range(MAX_DEPTH + 1))
    if kind == "not":
        return "NOT " * MAX_DEPTH + "tariff"
    return "(" * (MAX_DEPTH // 2) + "NOT " * (MAX_DEPTH // 2) + "tariff" + ")" * (MAX_DEPTH // 2)


@pytest.mark.parametrize("kind", ["groups", "near", "not", "mixed"])
def test_a_query_at_the_limits_compiles_matches_and_explains(kind: str) -> None:
    from aggregator.config.model import TopicConfig
    from aggregator.models import Document, Entry
    from aggregator.rules.matcher import TopicMatcher, check_examples, match_entries
    from aggregator.rules.syntax import MAX_QUERY_WORDS

    query = deepest(kind)
    wide = " OR ".join(f"w{i}" for i in range(MAX_QUERY_WORDS - 1)) + " OR tariff"
    title = " ".join(f"word{i}" for i in range(40)) + " tariff"
    for text in (query, wide):
        topic = TopicConfig("t", "#t", text, exclude=text, examples_match=(title,))
        matcher = TopicMatcher.compile([topic])
        matcher.match(Document(title=title))
        matcher.explain(Document(title=title))
        check_examples([topic])
        assert parse_config({"feeds.toml": FEEDS, "topics.toml": f"[topics.t]\nquery = '{text}'\n"})
    # An even number of NOTs cancels out: every one of these matches the title.
    assert TopicMatcher.compile([TopicConfig("t", "#t", query)]).match(Document(title=title))
    entry = Entry("f", "g", "", "", title, "", None, "h")
    assert match_entries((("t", query, None),), [entry]) != ((),)


CLI_CASES = ["200 nested groups", "a 330-term NEAR chain", "1,000 chained NOTs", "a 50,000-term OR"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_check_config_exits_2_on_a_query_past_the_limits(config_dir: Path, name: str) -> None:
    (config_dir / "topics.toml").write_text(
        f"[topics.ai-policy]\nchannel = \"#ai-policy\"\nquery = '{HOSTILE_QUERIES[name]}'\n",
        encoding="utf-8",
    )
    checked = cli(config_dir, "check-config")
    assert checked.returncode == 2, checked.stderr[-2000:]
    assert f"{config_dir / 'topics.toml'}:3: topics.ai-policy.query: " in checked.stderr
    assert LIMITS[name] in checked.stderr
    assert "Traceback" not in checked.stderr


def test_run_exits_78_on_a_query_past_the_limits(config_dir: Path) -> None:
    (config_dir / "topics.toml").write_text(
        '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = \''
        + HOSTILE_QUERIES["1,000 chained NOTs"]
        + "'\n",
        encoding="utf-8",
    )
    started = cli(config_dir, "--log-format", "text", "run", timeout=30)
    assert started.returncode == 78, started.stderr[-2000:]
    assert "more than 32 levels deep" in started.stderr
    assert "Traceback" not in started.stderr
