"""The code stays ruff-clean (style, imports, and the no-shell / no-eval rules configured in pyproject) and
mypy-clean (webui, as configured in pyproject)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "webui", "tests", "benchmarks", "scripts",
                             "launch.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_is_clean() -> None:
    """webui type-checks under pyproject's [tool.mypy]; Gradio's own types check every event's keyword arguments.
    About 2 minutes on 2 cores without mypy's cache (.mypy_cache), seconds with it."""
    result = subprocess.run([sys.executable, "-m", "mypy", "webui"], cwd=REPO, capture_output=True, text=True,
                            timeout=540)
    assert result.returncode == 0, result.stdout + result.stderr
