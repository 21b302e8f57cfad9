"""The run's per-epoch history, `history.json`: what the report and `compare` plot (job/report/rundata.py reads it).

One JSON object, rewritten whole (atomically) at every change and uploaded like the other run files:

    {"format": 1, "steps_per_epoch": 40, "total_epochs": 20,
     "model": {"name": "resnet20", "parameters": 272474, "trainable_parameters": 270906},
     "starts": [{"started_at": 1764500000.0, "step": 0, "epoch": 0, "host": "...", "pid": 123,
                 "last_at": ..., "outcome": "preempted"}, ...],
     "epochs": [{"epoch": 1, "step": 40, "train_loss": ..., "train_top1": ..., "train_top5": ...,
                 "val_loss": ..., "val_top1": ..., "val_top5": ..., "lr": ..., "images_per_second": ...,
                 "train_steps": 40, "epoch_seconds": ..., "time": 1764500123.0, "start": 0}, ...]}

It stays true through any number of kills and resumes: a start drops the epochs that end after the step it resumed
from (their checkpoint was never committed, so they will be trained again), and an epoch is keyed by its number, so
one trained again appears once, with the values of its last run. `train_steps` is how many of the epoch's steps its
train figures cover (fewer than steps_per_epoch when a start resumed in the middle of it). A start's `last_at` is the
time of its last recorded event; a start killed with `kill -9` has no `outcome`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from job.errors import first_line
from job.hooks.base import Hook
from job.layout import HISTORY_FILE
from job.models.assembly import NETWORK_LAYER
from job.records import end_start, json_number, new_start

log = logging.getLogger("job")

FORMAT = 1


class HistoryHook(Hook):
    """The chief's: keeps `history.json` in the run."""

    def __init__(self, parts):
        self.run = parts.run
        self.batches = parts.batches
        self.steps_per_epoch = parts.steps_per_epoch
        self.record: dict[str, Any] = {
            "format": FORMAT, "steps_per_epoch": parts.steps_per_epoch, "total_epochs": parts.total_epochs,
            "model": {"name": parts.cfg.model.name, **_parameters(parts.model)},
            "starts": [], "epochs": [],
        }
        previous = self.run.read_record(HISTORY_FILE)  # downloaded for a remote run: a new pod's copy is empty
        for key in ("starts", "epochs"):
            if isinstance(previous.get(key), list):
                self.record[key] = [e for e in previous[key] if isinstance(e, dict)]

    # --- events --------------------------------------------------------------------------------------------------
    def on_train_start(self, state):
        step, cfg = state.step, state.run.cfg
        # Epochs that end after the resumed step were not committed: they are trained again and recorded anew.
        self.record["epochs"] = [e for e in self.record["epochs"]
                                 if int(e.get("epoch", 0)) * self.steps_per_epoch <= step]
        batches = self.batches.record()
        previous = self.record["starts"][-1] if self.record["starts"] else {}
        changed = {k: (previous[k], v) for k, v in batches.items() if k in previous and previous[k] != v}
        if changed:  # resumed on other capacity: same global batch, split differently
            log.info("resumed with %s where the last start had %s; the global batch, data order and schedule are "
                     "unchanged (%s)", ", ".join(f"{k}={new}" for k, (_, new) in changed.items()),
                     ", ".join(f"{k}={old}" for k, (old, _) in changed.items()), self.batches.describe())
        self.record["starts"].append(new_start(step, self.steps_per_epoch, **batches,
                                               precision=cfg.train.precision, xla=cfg.train.jit_compile))
        self._write()

    def on_epoch_end(self, state):
        now = time.time()
        start, epoch, train = self.record["starts"][-1], state.epoch, state.train
        entry = {"epoch": epoch + 1, "step": state.step,
                 **{f"train_{k}": json_number(train[k]) for k in ("loss", "top1", "top5") if k in train},
                 **{k: json_number(v) for k, v in (state.validation or {}).items()},
                 "lr": json_number(state.lr),
                 "images_per_second": json_number(train.get("images_per_second", float("nan"))),
                 "train_steps": state.step - max(start["step"], epoch * self.steps_per_epoch),
                 "epoch_seconds": json_number(now - max(start["last_at"], start["started_at"])),
                 "time": now, "start": len(self.record["starts"]) - 1}
        self.record["epochs"] = sorted([e for e in self.record["epochs"] if e.get("epoch") != epoch + 1] + [entry],
                                       key=lambda e: e["epoch"])
        start["last_at"] = now
        self._write()

    def on_train_end(self, state):
        end_start(self.record["starts"][-1], state.outcome, state.step)
        self._write()

    def on_failure(self, state):
        if self.record["starts"]:
            end_start(self.record["starts"][-1], "failed", state.step)
            self._write()

    # --- internals -----------------------------------------------------------------------------------------------
    def _write(self) -> None:
        try:
            self.run.write_json(HISTORY_FILE, self.record)
        except (OSError, RuntimeError) as e:  # a full disk or a closed run dir must not stop training
            log.warning("history not written: %s", first_line(e))


def _parameters(model) -> dict[str, int]:
    """The network's parameters, without the preprocessing statistics (a ZCA matrix alone has 9.4 million)."""
    try:
        network = model.get_layer(NETWORK_LAYER)
    except ValueError:
        network = model
    count = lambda weights: int(sum(math.prod(w.shape) for w in weights))  # noqa: E731
    return {"parameters": count(network.weights), "trainable_parameters": count(network.trainable_weights)}
