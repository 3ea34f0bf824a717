"""The shipped config in a test's own config directory.

The shipped topics name their relevance models relative to the config directory
(``model = "models/ai-policy.json"``), so a test that copies ``config/topics.toml`` somewhere also
needs the models beside it.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config"


def link_models(directory: Path) -> None:
    """Give ``directory`` the shipped models (a symlink; nothing is copied)."""
    target = directory / "models"
    if not target.exists():
        target.symlink_to(SHIPPED / "models", target_is_directory=True)
