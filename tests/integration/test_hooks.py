"""The hook contract (job/hooks/base.py): a hook added to a real run sees every event, in order, with the state the
loop hands it, at the steps the config makes them happen, at any train.steps_per_call; a hook's Stop ends the run
cleanly with its evaluation."""
import json
import subprocess
import sys

import pytest

from tests.support.trainer_runs import ROOT, committed_steps, trainer_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

# 2 epochs of 4 steps, train metrics every 2 steps, a periodic checkpoint every 3 steps, a validation split.
ARGS = ["--config", "digits_resnet20", "model.name=mlp", "train.epochs=2", "train.max_steps_per_epoch=4",
        "train.batch_size=16", "run.log_every_steps=2", "checkpoint.every_steps=3", "run.progress=false",
        "data.validation_split=0.1"]


def hooked_run(tmp_path, *extra: str, args=ARGS) -> tuple[subprocess.CompletedProcess, list[dict]]:
    events = tmp_path / "events"
    result = subprocess.run([sys.executable, "-m", "tests.support.hooked_train", "--events", str(events),
                             *extra, "--", *args, f"run.dir={tmp_path / 'run'}"],
                            cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=600)
    lines = (events / "events-0.jsonl").read_text().splitlines() if (events / "events-0.jsonl").exists() else []
    return result, [json.loads(line) for line in lines]


def test_a_hook_sees_every_event_in_order_with_its_state(tmp_path):
    result, events = hooked_run(tmp_path, "--record-every-steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [(e["event"], e["step"]) for e in events]
    assert seen == [
        ("train_start", 0),
        ("epoch_start", 0), ("first_step", 1), ("step", 1),
        ("interval_end", 2), ("step", 2),
        ("checkpoint_saved", 3), ("step", 3),  # every 3 steps: the periodic checkpoint is a step hook too
        ("interval_end", 4), ("step", 4), ("epoch_end", 4), ("checkpoint_saved", 4),
        ("epoch_start", 4), ("step", 5),
        ("interval_end", 6), ("checkpoint_saved", 6), ("step", 6), ("step", 7),
        ("interval_end", 8), ("step", 8), ("epoch_end", 8), ("checkpoint_saved", 8),
        ("train_end", 8),
    ], seen
    by_event = {e["event"]: e for e in events}
    assert by_event["train_end"]["outcome"] == "finished" and by_event["train_end"]["evaluated"]
    assert by_event["first_step"]["has_batch"] and not by_event["step"]["has_batch"]
    assert all(e["train"]["steps"] == 2 for e in events if e["event"] == "interval_end")
    assert all(e["saved_step"] == e["step"] for e in events if e["event"] == "checkpoint_saved")
    assert [e["epoch"] for e in events if e["event"] in ("epoch_start", "epoch_end")] == [0, 0, 1, 1]
    # The loop keeps the best validation top-1 and the epochs since it improved; every state after an epoch's end
    # carries them (the tuner's objective and early stopping read them there).
    ends = [e for e in events if e["event"] == "epoch_end"]
    best = None
    for end in ends:
        top1 = end["validation"]["val_top1"]
        improved = best is None or top1 > best
        best = top1 if improved else best
        assert end["best_val_top1"] == pytest.approx(best)
        assert end["epochs_without_improvement"] == (0 if improved else 1)
    assert events[0]["best_val_top1"] is None and events[-1]["best_val_top1"] == pytest.approx(best)


# 2 epochs of 12 steps; metrics every 6 steps, a checkpoint every 5, the recorder's step events every 4: at 8 steps
# per call, calls must end at all of those steps for the hooks to see what they see at 1.
LONG = ["--config", "digits_resnet20", "model.name=mlp", "train.epochs=2", "train.max_steps_per_epoch=12",
        "train.batch_size=16", "run.log_every_steps=6", "checkpoint.every_steps=5", "run.progress=false",
        "train.deterministic=true"]


def test_step_events_are_the_same_at_any_steps_per_call(tmp_path):
    runs = {}
    for per_call in (1, 8):
        result, events = hooked_run(tmp_path / f"spc{per_call}", "--record-every-steps", "4",
                                    args=[*LONG, f"train.steps_per_call={per_call}"])
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{per_call} step(s) per call" in result.stderr, result.stderr[-3000:]
        runs[per_call] = events
    one, eight = runs[1], runs[8]
    assert [e["step"] for e in one if e["event"] == "step"] == [4, 8, 12, 16, 20, 24]
    assert [e["step"] for e in one if e["event"] == "checkpoint_saved"] == [5, 10, 12, 15, 20, 24]
    fields = ("event", "step", "epoch", "saved_step", "outcome", "best_val_top1", "epochs_without_improvement")
    assert [tuple(e[k] for k in fields) for e in eight] == [tuple(e[k] for k in fields) for e in one]
    for a, b in zip(one, eight):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)
        if a["event"] == "interval_end":
            assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)


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
