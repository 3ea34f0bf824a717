"""The one error hierarchy of the project.

Messages read like ``fetch failed: 'https://x/feed': ReadTimeout after 10.0 s``. Inside a batch
these errors are turned into values (``FeedOutcome``, ``DeliveryOutcome``), so one failure never
stops the rest.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AggregatorError):
    """A config file is missing, unreadable or invalid.

    ``problems`` holds every problem found, each already naming its file, line and key path.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RuleSyntaxError(AggregatorError):
    """A topic query does not parse. ``column`` is 1-based, for the caret under the query."""

    def __init__(self, message: str, query: str, column: int) -> None:
        self.message = message
        self.query = query
        self.column = column
        super().__init__(f"{message} at column {column}")

    def pointer(self, width: int = 100) -> str:
        """The query's line with a caret under the offending column; a long line is cut to
        ``width`` characters around the column, so a pasted 100 KB query stays readable."""
        line, caret = self.query, self.column - 1
        if len(line) > width:
            start = max(0, min(caret - width // 2, len(line) - width))
            cut = line[start : start + width]
            before = "\u2026" if start > 0 else ""
            after = "\u2026" if start + width < len(line) else ""
            line, caret = f"{before}{cut}{after}", caret - start + len(before)
        return f"{line}\n{' ' * caret}^"


class FeedError(AggregatorError):
    """Fetching or parsing one feed failed."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url!r}: {reason}")


class DeliveryError(AggregatorError):
    """Slack refused or failed a message.

    ``permanent`` errors (``channel_not_found``, ``invalid_auth`` ...) are never retried;
    ``retry_after`` is the server's requested wait in seconds when it gave one.
    """

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        channel_wide: bool = False,
    ) -> None:
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        self.channel_wide = channel_wide
        super().__init__(reason)


class StoreError(AggregatorError):
    """The database cannot be opened, migrated or written."""


class ModelError(AggregatorError):
    """A relevance model file cannot be used: missing, unreadable, of another format, version
    or topic, or malformed. The message names the file and what is wrong."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class TrainingDataError(AggregatorError):
    """Labelled items that cannot train a model (too few, or of one class only)."""
