"""The hook interface (job/hooks/base.py): a hook added to a real run sees every event, in order, at the steps the
config makes them happen, and a hook's request to stop ends the run cleanly with its evaluation."""
import json
import subprocess
import sys

import pytest

from trainer_runs import ROOT, committed_steps, trainer_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

# 2 epochs of 4 steps, train metrics every 2 steps, a periodic checkpoint every 3 steps, a validation split.
ARGS = ["--config", "digits_resnet20", "model.name=mlp", "train.epochs=2", "train.max_steps_per_epoch=4",
        "train.batch_size=16", "run.log_every_steps=2", "checkpoint.every_steps=3", "run.progress=false"]


def hooked_run(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    events = tmp_path / "events"
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "hooked_train.py"), "--events", str(events),
                             *extra, "--", *ARGS, f"run.dir={tmp_path / 'run'}"],
                            cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=600)
    lines = (events / "events-0.jsonl").read_text().splitlines() if (events / "events-0.jsonl").exists() else []
    return result, [json.loads(line) for line in lines]


def test_a_hook_sees_every_event_in_order(tmp_path):
    result, events = hooked_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [(e["event"], e["step"]) for e in events]
    assert seen == [
        ("train_start", 0),
        ("epoch_start", 0), ("first_step", 1), ("step_end", 1),
        ("interval_end", 2), ("step_end", 2),
        ("checkpoint_saved", 3), ("step_end", 3),  # every 3 steps: the periodic checkpoint is a step hook too
        ("interval_end", 4), ("step_end", 4), ("epoch_end", 4), ("checkpoint_saved", 4),
        ("epoch_start", 4), ("step_end", 5),
        ("interval_end", 6), ("checkpoint_saved", 6), ("step_end", 6), ("step_end", 7),
        ("interval_end", 8), ("step_end", 8), ("epoch_end", 8), ("checkpoint_saved", 8),
        ("train_end", 8),
    ], seen
    by_event = {e["event"]: e for e in events}
    assert by_event["train_end"]["outcome"] == "finished" and by_event["train_end"]["evaluated"]
    assert all(e["steps"] == 2 for e in events if e["event"] == "interval_end")
    assert all(e["val_top1"] is not None for e in events if e["event"] == "epoch_end")


def test_a_hook_that_asks_to_stop_finishes_the_run_with_its_evaluation(tmp_path):
    result, events = hooked_run(tmp_path, "--stop-at-step", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    end = events[-1]
    # The request rides step 3's all-reduce and is read back while step 4 runs: the run stops after step 4 (the
    # epoch's end here), is saved there and evaluated; epoch 2 never starts.
    assert end["event"] == "train_end" and end["outcome"] == "stopped" and end["evaluated"], end
    assert end["step"] == 4 and committed_steps(tmp_path / "run")[-1] == 4
    assert not [e for e in events if e["event"] == "epoch_start" and e["epoch"] == 1]
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["step"] == 4
