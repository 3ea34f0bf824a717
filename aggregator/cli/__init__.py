"""The ``aggregator`` command: a thin click layer over the modules.

:mod:`aggregator.cli.main` holds the group and the service commands; each other module adds the
commands of one area to it when imported here.
"""

from aggregator.cli import delivery, feedback, feeds, history, relevance, topics
from aggregator.cli.main import main

__all__ = ["delivery", "feedback", "feeds", "history", "main", "relevance", "topics"]
