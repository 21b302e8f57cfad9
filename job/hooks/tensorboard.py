"""TensorBoard: train and validation scalars, a grid of augmented inputs, start-up time and checkpoint blocking.
The chief's alone (the writers live in the run directory, which the chief writes)."""
from __future__ import annotations

import time

from job.hooks.base import Hook
from job.proc import start_time
from job.summaries import SummaryWriters

PROCESS_START = start_time()  # at import, which the trainer does at start-up: the figure includes the imports


class TensorBoardHook(Hook):
    def __init__(self, writers: SummaryWriters):
        self.writers = writers

    def on_first_step(self, state):
        self.writers.log_images(state.batch, state.step)
        self.writers.log_scalar("seconds_to_first_step", time.time() - PROCESS_START, state.step)

    def on_interval_end(self, state):
        self.writers.log_train(state.step, state.train)

    def on_epoch_end(self, state):
        if state.validation:
            self.writers.log_validation(state.step, state.validation)

    def on_checkpoint_saved(self, state):
        # how long training waited for the save: the figure the benchmarks watch
        self.writers.log_scalar("checkpoint_blocking_seconds", state.blocking_seconds, state.saved_step)

    def on_train_end(self, state):
        self.writers.close()
