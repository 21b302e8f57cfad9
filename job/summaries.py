"""TensorBoard event files of a run: <run>/logs/{train,validation,eval}, uploaded while the run goes on."""
from __future__ import annotations

import tensorflow as tf

from job import data as datalib
from job.config import Config
from job.layout import EVAL_LOGS, LOGS_DIR, TRAIN_LOGS, VALIDATION_LOGS
from job.rundir import RunDir


class SummaryWriters:
    """One writer per TensorBoard run (train, validation, eval); `run.watch` uploads them every flush interval."""

    def __init__(self, run: RunDir, cfg: Config):
        flush_ms = int(cfg.run.summary_flush_seconds * 1000)
        self.train = tf.summary.create_file_writer(str(run.local / TRAIN_LOGS), flush_millis=flush_ms)
        self.val = tf.summary.create_file_writer(str(run.local / VALIDATION_LOGS), flush_millis=flush_ms)
        self.eval = tf.summary.create_file_writer(str(run.local / EVAL_LOGS), flush_millis=flush_ms)
        run.watch(LOGS_DIR)

    def log_train(self, step: int, stats: dict[str, float]) -> None:
        """`stats`: an interval's figures (job.metrics.interval_stats plus the learning rate `lr`)."""
        with self.train.as_default(step=step):
            tf.summary.scalar("loss", stats["loss"])
            tf.summary.scalar("top1", stats["top1"])
            tf.summary.scalar("top5", stats["top5"])
            tf.summary.scalar("learning_rate", stats["lr"])
            tf.summary.scalar("images_per_second", stats["images_per_second"])
            tf.summary.scalar("step_seconds", stats["step_seconds"])

    def log_scalar(self, name: str, value: float, step: int) -> None:
        with self.train.as_default(step=step):
            tf.summary.scalar(name, value)

    def log_validation(self, step: int, metrics: dict[str, float]) -> None:
        """`metrics`: job.metrics.validation_metrics, logged under the train scalars' names in the validation run."""
        with self.val.as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(name.removeprefix("val_"), value)
        self.val.flush()

    def log_images(self, batch, step: int) -> None:
        images = batch[0]
        if hasattr(images, "values"):  # a per-replica batch: show the first replica's part
            images = images.values[0]
        with self.train.as_default(step=step):
            tf.summary.image("augmented_inputs", datalib.augmented_grid(images), step=step)

    def close(self) -> None:
        for writer in (self.train, self.val, self.eval):
            writer.flush()
            writer.close()
