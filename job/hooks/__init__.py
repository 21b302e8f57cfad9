"""Hooks around the training step (job/hooks/base.py has the interface) and the set every run gets."""
from __future__ import annotations

from typing import TYPE_CHECKING

from job.hooks.base import Event, Hook, RunInfo, Save, State, Stop
from job.hooks.guards import DivergenceGuard, EarlyStopping, PeriodicCheckpoint
from job.hooks.history import HistoryHook
from job.hooks.progress import ProgressHook
from job.hooks.status import StatusHook
from job.hooks.tensorboard import TensorBoardHook

if TYPE_CHECKING:
    from job.builder import RunParts

__all__ = ["Event", "Hook", "RunInfo", "Save", "State", "Stop", "default_hooks"]


def default_hooks(parts: RunParts) -> list[Hook]:
    """What `python -m job train` runs with, in this order: progress first, so a hook that raises (divergence) does
    so after the figures it acted on were shown."""
    cfg = parts.cfg
    hooks: list[Hook] = [ProgressHook(enabled=cfg.run.progress and parts.backend.is_chief)]
    if parts.writers is not None:
        hooks.append(TensorBoardHook(parts.writers))
    hooks += [DivergenceGuard(), EarlyStopping(cfg.train.early_stopping_patience),
              PeriodicCheckpoint(cfg.checkpoint.every_steps, parts.steps_per_epoch)]
    hooks += [StatusHook(parts)] if parts.backend.is_chief else []  # status.json and the log in the run
    hooks += [HistoryHook(parts)] if parts.backend.is_chief else []  # history.json
    return hooks
