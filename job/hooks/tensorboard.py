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

    def on_first_step(self, loop, batch):
        self.writers.log_images(batch, loop.step)
        self.writers.log_scalar("seconds_to_first_step", time.time() - PROCESS_START, loop.step)

    def on_interval_end(self, loop, stats):
        self.writers.log_train(loop.step, stats)

    def on_epoch_end(self, loop, epoch, train, validation):
        if validation:
            self.writers.log_validation(loop.step, validation)

    def on_checkpoint_saved(self, loop, step, blocking_seconds):
        # how long training waited for the save: the figure the benchmarks watch
        self.writers.log_scalar("checkpoint_blocking_seconds", blocking_seconds, step)

    def on_train_end(self, loop, outcome, evaluation):
        self.writers.close()
