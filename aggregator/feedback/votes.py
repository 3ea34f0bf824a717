"""What a person's reactions on one alert count as. Pure: ``now`` is passed in.

Slack lists, for each emoji on a message, the users who added it, and nothing about when. A
person's reactions are reduced to two facts (one of theirs means relevant; one means not
relevant) and compared with what the last read saw:

- one kind only: that is their label;
- both kinds: the kind that appeared since the last read is the latest, and wins; both seen at
  once on a first read, nothing tells which came last: unsure;
- neither any more: their label goes (a removed reaction removes the label).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from aggregator.config.reactions import base_name, spellings
from aggregator.models import Reaction, Seen

# (relevant, not_relevant): which kinds of reaction a person has on a message
Kinds = tuple[bool, bool]


class ReactionMeaning:
    """Which emoji mean relevant and not relevant, however Slack spells them."""

    def __init__(self, relevant: Iterable[str], not_relevant: Iterable[str]) -> None:
        self.relevant = spellings(relevant)
        self.not_relevant = spellings(not_relevant)

    def kinds(self, reactions: Iterable[Reaction]) -> dict[str, Kinds]:
        """Each person with a reaction that means something, and which kinds they have."""
        found: dict[str, Kinds] = {}
        for reaction in reactions:
            name = base_name(reaction.name)
            relevant, not_relevant = name in self.relevant, name in self.not_relevant
            if not relevant and not not_relevant:
                continue
            for user in reaction.users:
                had = found.get(user, (False, False))
                found[user] = (had[0] or relevant, had[1] or not_relevant)
        return found


def decide(previous: Seen | None, kinds: Kinds, now: datetime) -> Seen | None:
    """A person's state after this read (None: no label any more). ``previous`` is returned
    unchanged, its time kept, when nothing about them changed."""
    relevant, not_relevant = kinds
    if not relevant and not not_relevant:
        return None
    if relevant and not_relevant:
        if previous is None:
            label: int | None = None  # both at once: which came last is unknown
        elif previous.relevant and previous.not_relevant:
            label = previous.label  # nothing new since the last read
        elif previous.relevant:
            label = 0  # not relevant was added since
        elif previous.not_relevant:
            label = 1
        else:
            label = None
    else:
        label = 1 if relevant else 0
    if previous is not None and previous.label == label:
        if (previous.relevant, previous.not_relevant) == kinds:
            return previous
        return Seen(relevant, not_relevant, label, previous.at)
    return Seen(relevant, not_relevant, label, now)


def changes(
    seen: Mapping[str, Seen], now_kinds: Mapping[str, Kinds], now: datetime
) -> dict[str, Seen | None]:
    """Per person whose state changed: their new state, or None when their label goes."""
    out: dict[str, Seen | None] = {}
    for who in sorted(set(seen) | set(now_kinds)):
        before = seen.get(who)
        after = decide(before, now_kinds.get(who, (False, False)), now)
        if after != before:
            out[who] = after
    return out
