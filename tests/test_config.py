"""Config validation: every problem is reported at once, with its file, line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config.load import (
    DEFAULTS_DIR,
    load_config,
    parse_config,
    resolve_config_dir,
    slack_token,
)
from aggregator.config.model import Settings
from aggregator.config.values import parse_duration, parse_size
from aggregator.errors import ConfigError
from aggregator.ingest.workers import ParsePool

REPO = Path(__file__).resolve().parents[1]
TOPICS = """\
[topics.ai-policy]
channel = "#ai-policy"
query = 'AI AND regulat*'

[topics.executive-orders]
channel = "#executive-orders"
query = '"executive order"'
"""
FEEDS = """\
# a comment
[[feeds]]
url = "https://a.example/feed"

[[feeds]]
name = "B"
url = "https://b.example/feed"
topics = ["executive-orders"]
"""


def problems(**texts: str) -> list[str]:
    files = {"aggregator.toml": "", "feeds.toml": FEEDS, "topics.toml": TOPICS}
    files |= {f"{name}.toml": text for name, text in texts.items()}
    with pytest.raises(ConfigError) as caught:
        parse_config(files)
    return caught.value.problems


def test_a_valid_config_loads_with_defaults() -> None:
    config = parse_config({"feeds.toml": FEEDS, "topics.toml": TOPICS})
    assert [f.name for f in config.feeds] == ["a.example", "B"]
    assert config.feeds[1].topics == ("executive-orders",)
    assert config.settings.poll_interval == 300
    assert config.settings.slack_api_url == "https://slack.com/api/"
    assert config.topic("ai-policy").channel == "#ai-policy"


def test_settings_errors_name_file_line_and_key() -> None:
    found = problems(aggregator='[storage]\ndatabase = "x.db"\n\n[polling]\ninterval = "3s"\n'
                     '[fetch]\nconcurrency = 0\nmystery = 1\n')  # fmt: skip
    assert any(
        p.startswith('aggregator.toml:5: polling.interval: must be at least "10s"') for p in found
    )
    assert any(p.startswith("aggregator.toml:7: fetch.concurrency: expected a whole number")
               for p in found)  # fmt: skip
    assert any(p.startswith("aggregator.toml:8: fetch.mystery: unknown key") for p in found)


def test_the_parse_time_limit_is_one_key_with_the_pool_default() -> None:
    assert Settings().parse_timeout == ParsePool().time_limit == 60.0
    assert load_config(REPO / "config").settings.parse_timeout == 60.0  # the shipped file says so
    files = {"feeds.toml": FEEDS, "topics.toml": TOPICS}
    config = parse_config({**files, "aggregator.toml": '[fetch]\nparse_timeout = "90s"\n'})
    assert config.settings.parse_timeout == 90.0
    found = problems(aggregator="[fetch]\nparse_timeout = 0\n")
    assert found == ['aggregator.toml:2: fetch.parse_timeout: must be at least "1s", got 0']


def test_feed_errors_name_the_feed_and_its_line() -> None:
    feeds = FEEDS + '\n[[feeds]]\nurl = "https://a.example/feed"\ntopics = ["nope"]\n'
    feeds += '\n[[feeds]]\nname = "C"\nurl = "ftp://c.example/"\n'
    found = problems(feeds=feeds)
    assert "feeds.toml:11: feeds[2].url: duplicate feed URL 'https://a.example/feed'" in found[0]
    assert found[1].startswith("feeds.toml:12: feeds[2].topics: unknown topic 'nope'")
    assert found[2].startswith("feeds.toml:16: feeds[3].url: expected an http(s) URL")


def test_topic_errors_point_at_the_query_column_and_bad_channels() -> None:
    topics = TOPICS.replace("'AI AND regulat*'", "'AI AND (regulat*'").replace(
        '"#executive-orders"', '"Executive Orders"'
    )
    found = problems(topics=topics)
    query = next(p for p in found if "topics.ai-policy.query" in p)
    assert query.startswith("topics.toml:3: topics.ai-policy.query: ")
    assert "column 8" in query and "\n" in query and query.rstrip().endswith("^")
    assert any(p.startswith("topics.toml:6: topics.executive-orders.channel: bad channel name")
               for p in found)  # fmt: skip


def test_every_problem_is_reported_in_one_pass() -> None:
    found = problems(aggregator='[fetch]\ntimeout = "soon"\n', feeds='[[feeds]]\nname = "x"\n')
    assert len(found) == 2
    assert found[0].startswith("aggregator.toml:2: fetch.timeout: expected a duration")
    assert found[1].startswith("feeds.toml:1: feeds[0].url: missing")


def test_invalid_toml_names_the_file() -> None:
    assert problems(topics="[topics.x\n")[0].startswith("topics.toml: invalid TOML")


def test_environment_overrides_the_slack_url_and_supplies_the_token(tmp_path: Path) -> None:
    env = {"SLACK_API_URL": "http://127.0.0.1:9/api"}
    config = parse_config({"feeds.toml": FEEDS, "topics.toml": TOPICS}, environ=env)
    assert config.settings.slack_api_url == "http://127.0.0.1:9/api/"
    assert slack_token({"SLACK_BOT_TOKEN": " xoxb-1 "}) == "xoxb-1"
    (tmp_path / "slack-bot-token").write_text("xoxb-2\n")
    assert slack_token({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "xoxb-2"
    assert slack_token({}) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(300, 300.0), ("90s", 90.0), ("5m", 300.0), ("24h", 86400.0), ("7d", 604800.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", -1, True, "5 weeks"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size("10MiB") == 10 * 1024 * 1024
    assert parse_size(2048) == 2048
    with pytest.raises(ValueError, match="size"):
        parse_size("ten megs")


def test_missing_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "topics.toml").write_text(TOPICS)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [f"{tmp_path / 'feeds.toml'}: file is missing"]


def test_the_shipped_config_is_valid_and_embedded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = load_config(REPO / "config")
    embedded = load_config(DEFAULTS_DIR)
    assert shipped.feeds == embedded.feeds and shipped.topics == embedded.topics
    assert len(shipped.feeds) >= 20
    monkeypatch.chdir(tmp_path)  # no ./config here: the embedded defaults are used
    assert resolve_config_dir(None, {}) == DEFAULTS_DIR
    assert resolve_config_dir(None, {"AGGREGATOR_CONFIG": "/etc/aggregator"}) == Path(
        "/etc/aggregator"
    )
    assert resolve_config_dir("mine", {"AGGREGATOR_CONFIG": "/x"}) == Path("mine")


def test_fetch_address_options() -> None:
    config = parse_config(
        {
            "aggregator.toml": "[fetch]\nallow_private = true\n"
            'allow_networks = ["10.1.2.3/16", "::1"]\n',
            "feeds.toml": FEEDS,
            "topics.toml": TOPICS,
        }
    )
    assert config.settings.allow_private is True
    assert config.settings.allow_networks == ("10.1.0.0/16", "::1/128")
    assert (
        parse_config({"feeds.toml": FEEDS, "topics.toml": TOPICS}).settings.allow_private is False
    )
    found = problems(aggregator='[fetch]\nallow_private = "yes"\nallow_networks = ["intranet"]\n')
    assert found[0].startswith("aggregator.toml:2: fetch.allow_private: expected true or false")
    assert found[1].startswith("aggregator.toml:3: fetch.allow_networks: expected addresses or")
