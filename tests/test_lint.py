"""The code stays ruff-clean (style, imports, and the no-shell / no-eval rules configured in pyproject)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "webui", "tests", "benchmarks", "scripts",
                             "launch.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
