"""Test-time augmentation in a real run (docs/configuration.md "Recipes"): the run stores and reports the figures
with and without it while its export stays TTA-free; evaluate takes a mode and refuses an unknown one."""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from job.config import load_config  # noqa: E402
from job.data import load_splits  # noqa: E402
from job.models import load_model  # noqa: E402
from tests.support.trainer_runs import run_job  # noqa: E402
from tests.unit.test_tta import logits_of


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tta") / "run"
    done = run_job("train", "--config", "digits_resnet20", "model.name=simple_cnn", "optim.lr=0.02",
                   "train.epochs=2", "train.tta=flip", f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_with_tta_reports_both_and_exports_the_model_without_it(tta_run):
    run_dir, done = tta_run
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["tta"] == "flip"
    assert set(metrics["without_tta"]) >= {"top1", "top5", "loss"}
    assert "top-1 without TTA" in done.stdout and "flip TTA" in done.stdout
    report = (run_dir / "eval" / "report.html").read_text()
    assert "test top-1 without TTA" in report

    exported = load_model(str(run_dir / "export" / "model.keras"))
    splits = load_splits(load_config(str(run_dir / "config.yaml")).data, seed=0)
    images = splits.x_test.astype(np.float32)
    logits = logits_of(exported, images)
    # a flip-averaging model would answer the same for an image and its mirror: the export does not
    assert not np.allclose(logits, logits_of(exported, images[:, :, ::-1]), atol=1e-3)
    # and the stored figures without TTA are the export's own
    top1 = float((logits.argmax(1) == splits.y_test).mean())
    assert top1 == pytest.approx(metrics["without_tta"]["top1"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_takes_a_tta_mode_and_refuses_an_unknown_one(tta_run):
    run_dir, _ = tta_run
    again = run_job("evaluate", "--run-dir", str(run_dir), "--tta", "flip-translate")
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["tta"] == "flip-translate" and "without_tta" in metrics

    bad = run_job("evaluate", "--run-dir", str(run_dir), "--tta", "rotate")
    assert bad.returncode == 2
    assert "--tta" in bad.stderr and "flip-translate" in bad.stderr and bad.stderr.strip().count("\n") == 0
