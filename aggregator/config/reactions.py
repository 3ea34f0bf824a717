"""Emoji names as the ``[feedback]`` settings and Slack's API write them.

A person writes ``"+1"`` or ``":+1:"``; Slack's API reports the same reaction as ``"+1"`` or
``"thumbsup"`` (its alias), and with a skin tone as ``"+1::skin-tone-2"``. Pure: the loader uses
:func:`reaction_names` to validate, the feedback reader :func:`spellings` and :func:`base_name`
to recognise a reaction however Slack spells it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_RELEVANT = ("+1", "white_check_mark")
DEFAULT_NOT_RELEVANT = ("-1", "x")
# Slack's own aliases of the default emoji: one reaction, two names.
_ALIAS_GROUPS = (
    frozenset({"+1", "thumbsup"}),
    frozenset({"-1", "thumbsdown"}),
)
_NAME = re.compile(r"^[a-z0-9_+'-]{1,100}$")
_SKIN_TONE = re.compile(r"::skin-tone-\d+$")


def base_name(name: str) -> str:
    """The emoji without its skin tone: every tone of a reaction counts the same."""
    return _SKIN_TONE.sub("", name)


def spellings(names: Iterable[str]) -> frozenset[str]:
    """The names given and every alias Slack may report them under."""
    out = set(names)
    for group in _ALIAS_GROUPS:
        if out & group:
            out |= group
    return frozenset(out)


def reaction_names(value: object) -> tuple[str, ...]:
    """A list of emoji names: ``["+1", "white_check_mark"]`` (colons around a name are fine)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError('expected a list of emoji names such as ["+1", "white_check_mark"]')
    if not value:
        raise ValueError("expected at least one emoji name (leave the key out for the default)")
    names: list[str] = []
    for raw in value:
        name = raw.strip().strip(":").lower()
        if "::" in name:
            raise ValueError(f"{raw!r}: give the emoji without a skin tone; every tone counts")
        if not _NAME.match(name):
            raise ValueError(
                f"{raw!r} is not an emoji name (lower-case letters, digits, '_', '-', '+', "
                "as in :+1: or :white_check_mark:)"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def overlap(relevant: Iterable[str], not_relevant: Iterable[str]) -> list[str]:
    """Names (or their aliases) that would mean both relevant and not relevant."""
    both = spellings(relevant) & spellings(not_relevant)
    return sorted(both)
