"""aggregator.imports: a library's optional extras stay out of the service's processes."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.imports import without


def test_a_hidden_module_fails_to_import_inside_and_imports_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "extra_for_the_test.py").write_text("VALUE = 7\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with without("extra_for_the_test"), pytest.raises(ImportError):
        importlib.import_module("extra_for_the_test")
    assert importlib.import_module("extra_for_the_test").VALUE == 7
    # already imported: left alone
    with without("extra_for_the_test"):
        assert importlib.import_module("extra_for_the_test").VALUE == 7
    del sys.modules["extra_for_the_test"]


def test_the_service_never_imports_numpy_or_pygments_though_both_are_installed() -> None:
    # installed: numpy for training, pygments for pytest (else this test would prove nothing)
    assert importlib.util.find_spec("numpy") and importlib.util.find_spec("pygments")
    code = (
        "import sys\n"
        "from aggregator.service import runtime\n"
        "from aggregator import pipeline\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pygments', 'rich') if m in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert found.stdout.strip() == "[]", found.stderr
