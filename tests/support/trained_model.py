"""A small trained run for the tests of what uses one (predict, serve, exports): simple_cnn on digits (about 94 % test
top-1 after 4 epochs, 12 s), trained once per test session by the real CLI, with a validation split (so it has a best
checkpoint) and its exports.

    def test_x(digits_run): ...     # a Path to the finished run directory; treat it as read-only
"""
from __future__ import annotations

import pytest

from tests.support.trainer_runs import run_job

DIGITS_RUN_ARGS = ("model.name=simple_cnn", "optim.lr=0.02", "train.epochs=4", "train.seed=3",
                   "export.litert=true")  # its LiteRT exports: tests/integration/test_litert.py


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits_run") / "run"
    result = run_job("train", "--config", "digits_resnet20", f"run.dir={run_dir}", *DIGITS_RUN_ARGS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir
