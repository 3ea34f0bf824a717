"""``[feedback]`` in aggregator.toml: each key validated where it is written, with file:line."""

from __future__ import annotations

import pytest

from aggregator.config.load import parse_config
from aggregator.config.model import FeedbackSettings
from aggregator.config.reactions import base_name, spellings
from aggregator.errors import ConfigError

TOPICS = "[topics.ai-policy]\nchannel = \"#ai-policy\"\nquery = 'AI AND regulat*'\n"
FEEDS = '[[feeds]]\nurl = "https://a.example/feed"\n'


def settings(text: str) -> FeedbackSettings:
    files = {"aggregator.toml": text, "feeds.toml": FEEDS, "topics.toml": TOPICS}
    return parse_config(files).settings.feedback


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings(text)
    return caught.value.problems


def test_defaults_without_the_section() -> None:
    found = settings("")
    assert found == FeedbackSettings()
    assert (found.enabled, found.window, found.read_every) == (True, 7 * 86400.0, 900.0)
    assert found.relevant == ("+1", "white_check_mark")
    assert found.not_relevant == ("-1", "x")


def test_every_key_is_read() -> None:
    found = settings(
        '[feedback]\nenabled = false\nwindow = "3d"\nread_every = "1h"\n'
        'relevant = [":star:", "100"]\nnot_relevant = ["Thumbsdown", "-1", "-1"]\n'
    )
    assert (found.enabled, found.window, found.read_every) == (False, 3 * 86400.0, 3600.0)
    assert found.relevant == ("star", "100")  # colons dropped
    assert found.not_relevant == ("thumbsdown", "-1")  # lower-cased, each once


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('window = "30m"', 'aggregator.toml:3: feedback.window: must be at least "1h"'),
        ('window = "91d"', 'aggregator.toml:3: feedback.window: must be at most "90d"'),
        ("read_every = 5", 'aggregator.toml:3: feedback.read_every: must be at least "1m"'),
        ('read_every = "2d"', 'aggregator.toml:3: feedback.read_every: must be at most "1d"'),
        ("read_every = inf", "aggregator.toml:3: feedback.read_every: a duration must be a finite"),
        ('enabled = "yes"', "aggregator.toml:3: feedback.enabled: expected true or false"),
        ("relevant = []", "aggregator.toml:3: feedback.relevant: expected at least one emoji"),
        ('relevant = "+1"', "aggregator.toml:3: feedback.relevant: expected a list of emoji"),
        ('relevant = ["thumbs up"]', "aggregator.toml:3: feedback.relevant: 'thumbs up' is not"),
        (
            'not_relevant = ["-1::skin-tone-3"]',
            "aggregator.toml:3: feedback.not_relevant: '-1::skin-tone-3': give the emoji "
            "without a skin tone",
        ),
        (
            'not_relevant = ["thumbsup"]',  # the alias of a default relevant one
            "aggregator.toml:3: feedback.not_relevant: also in feedback.relevant: +1, thumbsup",
        ),
        ("colour = 1", "aggregator.toml:3: feedback.colour: unknown key (expected one of: "),
    ],
)
def test_a_bad_value_is_refused_with_file_line_and_key(text: str, expected: str) -> None:
    found = problems(f"# reading reactions\n[feedback]\n{text}\n")
    assert any(p.startswith(expected) for p in found), found


def test_a_section_that_is_not_a_table_is_refused() -> None:
    assert problems('feedback = "on"\n') == ["aggregator.toml: feedback: expected a table"]


def test_slack_reports_reactions_by_alias_and_with_skin_tones() -> None:
    assert spellings(["+1", "white_check_mark"]) == {"+1", "thumbsup", "white_check_mark"}
    assert spellings(["thumbsdown"]) == {"-1", "thumbsdown"}
    assert base_name("+1::skin-tone-4") == "+1"
    assert base_name("x") == "x"
