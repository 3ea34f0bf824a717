"""The cycle benchmark, run tiny (10 feeds, 1 repetition) so that it cannot rot.

No timing is asserted here: speed is judged by ``make bench``, never by a test. These tests only
check that the benchmark runs end to end and reports every figure it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_cycle.py"
READER_PYTHON = ROOT / "bench" / ".venv-reader" / "bin" / "python"
KEYS = {
    "feeds", "cores", "repetitions", "floor", "cold", "warm", "churn", "floor_seconds",
    "cold_seconds", "warm_seconds", "churn_seconds", "cold_over_floor", "warm_parses",
    "churn_parses", "cold_parses", "peak_rss_mb", "cold_new_entries", "targets",
}  # fmt: skip
PEER_KEYS = {"reader_cold", "reader_warm", "reader_cold_seconds", "reader_cold_over_cold"}


def run_bench(*args: str) -> dict[str, Any]:
    return run_json(BENCH, "--feeds", "10", "--repeat", "1", "--json", *args)


def run_json(script: Path, *args: str) -> dict[str, Any]:
    """A benchmark's one JSON object, after checking that it ran clean."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_tiny_benchmark_reports_every_figure() -> None:
    result = run_bench("--peer", "skip")

    assert set(result) >= KEYS, KEYS - set(result)
    assert not PEER_KEYS & set(result)
    assert result["feeds"] == 10
    for phase in ("floor", "cold", "warm", "churn"):
        assert set(result[phase]) == {"median", "min", "max"}
    # Facts, not speeds: every item is stored once, and nothing unchanged is parsed again.
    assert result["cold_parses"] == 10
    assert result["cold_new_entries"] == result["items"]
    assert result["warm_parses"] == 0
    assert result["churn_parses"] == 1  # 10% of 10 feeds
    assert result["churn_new_entries"] == 3
    assert result["failed_fetches"] == 0
    assert result["peak_rss_mb"] > 0


@pytest.mark.skipif(
    not READER_PYTHON.exists(),
    reason=f"the reader peer's venv is absent ({READER_PYTHON}); `make bench` creates it",
)
def test_tiny_benchmark_runs_the_reader_peer() -> None:
    result = run_bench("--peer", "require")

    assert set(result) >= PEER_KEYS, PEER_KEYS - set(result)
    assert result["reader_entries"] == result["items"]
    assert result["reader_broken_feeds"] == 0


def test_tiny_parse_tuning_benchmark_reports_both_modes() -> None:
    script = ROOT / "bench" / "bench_parse_tuning.py"
    result = run_json(script, "--feeds", "5", "--repeat", "1", "--json")
    assert (result["feeds"], result["repetitions"]) == (5, 1)
    for mode in ("no_url", "url"):
        figures = result[mode]
        assert set(figures) == {
            "untuned_seconds",
            "tuned_seconds",
            "tuned_over_untuned",
            "tuned_ms_per_feed",
        }
        assert figures["untuned_seconds"] > 0 and figures["tuned_seconds"] > 0


def test_the_opml_import_benchmark_runs() -> None:
    result = run_json(ROOT / "bench" / "bench_opml.py", "--sizes", "20", "--json")
    (run,) = result["runs"]
    assert run["outlines"] == 20 and run["feeds_written"] == 20
    assert run["seconds"] > 0


def test_the_feedback_benchmark_runs() -> None:
    result = run_json(ROOT / "bench" / "bench_feedback.py", "--alerts", "30", "--channels", "2",
                      "--chatter", "1", "--pace", "0", "--json")  # fmt: skip
    first, second = result["first_read"], result["second_read"]
    # 15 alerts a channel, the chat after them: one call (a page of up to 200) per channel
    assert (first["calls"], first["found"], first["changed"]) == (2, 30, 10)
    assert (second["calls"], second["changed"]) == (2, 0)
    assert first["complete"] and second["complete"]
