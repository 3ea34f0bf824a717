"""Political-news alert bot: RSS/Atom feeds in, one Slack alert per matching story out."""

__version__ = "0.1.0"
