"""A database as schema version 1 left it, from ``fixtures/schema_v1.sql``: upgrades start here."""

from __future__ import annotations

import sqlite3
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "schema_v1.sql"


def v1_database(directory: Path) -> Path:
    """``directory/old.db``, written by the fixture's SQL."""
    path = directory / "old.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(FIXTURE.read_text(encoding="utf-8"))
    finally:
        conn.close()
    return path
