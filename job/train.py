"""The training loop: one loop for every backend, resumable at any step, ending with the final evaluation.

Resuming exactly needs only the global step: the epoch is step // steps_per_epoch, the data order and augmentation of
an epoch are pure functions of (seed, epoch, batch index), and model, optimizer and RNG state are in the checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from job import data as datalib
from job import models as modellib
from job.checkpoint import CheckpointStore
from job.config import Config
from job.distribute import Backend, make_backend
from job.errors import EXIT_OK, EXIT_PREEMPTED, UserError
from job.evaluate import evaluate_and_store
from job.optim import make_optimizer
from job.progress import EpochProgress
from job.rundir import RunDir
from job.runfiles import build_full_model, export_model, prepare_run_config
from job.runtime import configure
from job.summaries import SummaryWriters

log = logging.getLogger("job")


def _process_start_time() -> float:
    """Wall-clock time this process started (so start-up cost includes the imports), from /proc where it exists."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_START = _process_start_time()


@dataclass
class TrainState:
    """Variables the checkpoint carries besides model and optimizer."""

    step: tf.Variable
    best_val_top1: tf.Variable
    epochs_without_improvement: tf.Variable

    @classmethod
    def create(cls) -> "TrainState":
        return cls(step=tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
                   best_val_top1=tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_top1"),
                   epochs_without_improvement=tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs"))


class StopRequested:
    """SIGTERM (pod eviction, preemption), SIGINT, or SIGUSR1 (what mpirun passes on to the ranks when an MPIJob's
    launcher is stopped; job/relay.py): finish the current step, checkpoint, exit for a retry.

    A signal only sets this worker's request; the loop stops once a training step's all-reduce has carried the request
    to every worker (`agree`), so all workers leave the loop after the same step and take part in the same final save.
    Stopping on the local flag alone would let one worker save while another starts the next step: both would then
    wait in different collectives until the timeout, and no checkpoint would be committed."""

    def __init__(self) -> None:
        self.signal_name = ""
        self.agreed = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal_name:  # a second signal: the user really means it
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the end of this step", self.signal_name)

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)

    def agree(self, votes: float) -> None:
        """`votes`: the number of replicas whose worker had a request when the step started (summed over all)."""
        if votes > 0 and not self.agreed:
            self.agreed = True
            if not self.signal_name:
                log.warning("another worker was asked to stop: saving a checkpoint at the end of this step")

    def __bool__(self) -> bool:
        return self.agreed


def train(cfg: Config) -> int:
    configure(cfg)
    stop = StopRequested()
    backend = make_backend(cfg)
    splits = datalib.load_splits(cfg.data, cfg.train.seed)  # bad data fails before the run dir is touched
    run = RunDir.open(cfg.run_dir, cfg.run.work_dir, cfg.run.summary_flush_seconds)
    prepare_run_config(run, cfg, write=False)  # refuses a changed model/dataset before anything is written
    global_batch = cfg.train.batch_size
    steps_per_epoch = datalib.steps_per_epoch(len(splits.x_train), global_batch)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_epochs = cfg.train.epochs + cfg.train.finetune_epochs
    total_steps = total_epochs * steps_per_epoch
    if backend.is_chief:
        prepare_run_config(run, cfg, write=True)

    with backend.scope():
        model = build_full_model(cfg, splits.num_classes, splits.x_train.shape[1:])
        optimizer = make_optimizer(cfg, steps_per_epoch)
        state = TrainState.create()
        transfer = modellib.MODELS[cfg.model.name].transfer
        if transfer and cfg.train.finetune_epochs:
            modellib.set_transfer_phase(model.get_layer("classifier"), 2, cfg.model.unfreeze_top)
        # Built on every variable any phase trains, so the checkpoint has all slots from the start.
        optimizer.build(model.trainable_variables)
        if transfer:
            modellib.set_transfer_phase(model.get_layer("classifier"), 1, cfg.model.unfreeze_top)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=state.step,
                               best_val_top1=state.best_val_top1,
                               epochs_without_improvement=state.epochs_without_improvement,
                               rng=random_state_variables(model))
    store = CheckpointStore(run, keep=cfg.checkpoint.keep)

    latest = store.latest()
    if latest is not None:
        store.restore(ckpt, latest)
        step = int(state.step.numpy())
        log.info("resuming from step %d (epoch %d, batch %d of %d) in %s", step, step // steps_per_epoch + 1,
                 step % steps_per_epoch, steps_per_epoch, run.url)
    else:
        stats = datalib.fit_preprocessing(splits.x_train, cfg.data.normalization)
        model.get_layer("preprocess").set_stats(stats)
        log.info("starting %s on %s: %d epochs of %d steps, global batch %d on %d replica(s) (%s backend), run dir %s",
                 cfg.model.name, cfg.data.name, total_epochs, steps_per_epoch, global_batch, backend.num_replicas,
                 backend.name, run.url)
    backend.broadcast_initial_state(model.variables + optimizer.variables)
    _check_same_step(backend, int(state.step.numpy()))

    writers = SummaryWriters(run, cfg) if backend.is_chief else None
    loop = _Loop(cfg, backend, model, optimizer, state, splits, steps_per_epoch, writers)

    saved_step = int(state.step.numpy()) if latest is not None else -1

    def save(metrics: dict | None = None) -> None:
        nonlocal saved_step
        saved_step = int(state.step.numpy())
        if backend.is_chief:
            started = time.perf_counter()
            store.save(ckpt, saved_step, metrics)
            if writers:  # how long training waited for the save: the figure the benchmarks watch
                writers.log_scalar("checkpoint_blocking_seconds", time.perf_counter() - started, saved_step)
        elif backend.num_workers > 1:
            # Collective-backed variables need every worker to take part in a save; other workers write to scratch.
            with tempfile.TemporaryDirectory() as scratch:
                ckpt.write(str(Path(scratch) / "ckpt"))

    def patience_exhausted() -> bool:
        patience = cfg.train.early_stopping_patience
        return bool(patience) and int(state.epochs_without_improvement.numpy()) >= patience

    while int(state.step.numpy()) < total_steps and not stop and not patience_exhausted():
        epoch = int(state.step.numpy()) // steps_per_epoch
        loop.run_epoch(epoch, total_epochs, stop, save)
        if stop:
            break
        metrics = loop.validate(epoch)
        if metrics:
            improved = metrics["val_top1"] > state.best_val_top1.numpy()
            if improved:
                state.best_val_top1.assign(metrics["val_top1"])
                state.epochs_without_improvement.assign(0)
            else:
                state.epochs_without_improvement.assign_add(1)
        save(metrics)
        if patience_exhausted():
            log.info("early stopping: validation top-1 has not improved for %d epochs",
                     cfg.train.early_stopping_patience)

    if stop:
        save()
        run.close(cfg.checkpoint.upload_timeout_seconds)  # waits for the commit
        # Nobody leaves before the chief has committed: mpirun kills the remaining ranks when the first one exits.
        backend.barrier()
        log.warning("checkpoint at step %d committed; run the same command again to resume", int(state.step.numpy()))
        backend.shutdown()
        return EXIT_PREEMPTED

    if saved_step != int(state.step.numpy()):
        save()  # every worker takes part; a run resumed at its very end has nothing new to save
    backend.barrier()
    if backend.is_chief:
        export_model(run, model)
        evaluate_and_store(run, cfg, model, splits, step=int(state.step.numpy()), writer=writers.eval if writers else None)
        writers.close()
    run.close(cfg.checkpoint.upload_timeout_seconds)
    backend.shutdown()
    return EXIT_OK


def random_state_variables(model: keras.Model) -> list[tf.Variable]:
    """Keras layers' seed generators (dropout): not tracked by tf.train.Checkpoint through the model, yet a resumed
    run must continue their random streams to end with the same weights."""
    return [v.value for v in model.variables if v.path.endswith("seed_generator_state")]


def _check_same_step(backend: Backend, step: int) -> None:
    """Every worker must continue from the same checkpoint; a mismatch would silently train different models."""
    if backend.num_workers == 1:
        return
    total = backend.all_reduce_sum({"step": float(step)})["step"]
    if total != step * backend.num_workers:
        raise RuntimeError(f"workers restored different steps (this one {step}, sum {total}); restart the job")


class _Loop:
    def __init__(self, cfg: Config, backend: Backend, model: keras.Model, optimizer, state: TrainState,
                 splits, steps_per_epoch: int, writers):
        self.cfg, self.backend, self.model, self.optimizer, self.state = cfg, backend, model, optimizer, state
        self.splits, self.steps_per_epoch, self.writers = splits, steps_per_epoch, writers
        # Converted once: converting the arrays every epoch re-traces the pipeline and grows memory by the dataset's
        # size per epoch until it plateaus (measured: +1.6 GB after 20 CIFAR epochs).
        self.train_images = tf.constant(splits.x_train)
        self.train_labels = tf.constant(splits.y_train, tf.int32)
        self.sums = {k: tf.Variable(0.0, dtype=tf.float64, trainable=False)
                     for k in ("loss_sum", "correct1", "correct5", "count")}
        self._step_fn = None
        self._phase = None
        self._images_logged = False
        self._first_step_logged = False
        self._bad_intervals = 0
        self._votes = {False: tf.constant(0.0), True: tf.constant(1.0)}  # this worker's stop vote, made once

    # --- the step ---------------------------------------------------------------------------------------------
    def _make_step_fn(self):
        cfg, backend, model, optimizer = self.cfg, self.backend, self.model, self.optimizer
        global_batch = float(cfg.train.batch_size)
        num_classes = model.output_shape[-1]
        smoothing = cfg.optim.label_smoothing
        clip = cfg.optim.clip_norm
        variables = list(model.trainable_variables)  # fixed per phase; the function is re-made on a phase change

        def replica_step(batch, stop_vote):
            images, labels = batch
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                targets = tf.one_hot(labels, num_classes)
                per_example = keras.losses.categorical_crossentropy(
                    targets, logits, from_logits=True, label_smoothing=smoothing)
                loss = tf.reduce_sum(per_example) / global_batch
                if model.losses:  # L2 kernel regularizers (ELU recipe): once per step, split over the replicas
                    loss += tf.add_n([tf.cast(l, tf.float32) for l in model.losses]) / backend.num_replicas
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            grads = backend.reduce_gradients(grads)
            if clip > 0:
                # Gradients are still multiplied by the loss scale here, so the threshold is too.
                norm = backend.global_norm(grads)
                factor = tf.minimum(1.0, clip * optimizer.scale_loss(1.0) / (norm + 1e-12))
                grads = [g * factor for g in grads]
            optimizer.apply(grads, variables)
            labels64 = tf.cast(labels, tf.int32)
            k5 = min(5, num_classes)
            return {
                "loss_sum": tf.reduce_sum(per_example),
                "correct1": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels64, logits, 1), tf.float32)),
                "correct5": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels64, logits, k5), tf.float32)),
                "count": tf.cast(tf.shape(labels)[0], tf.float32),
                # Summed over all replicas with the metrics, so every worker sees every worker's request. (identity:
                # a per-replica value; the captured tensor itself cannot be reduced by MirroredStrategy.)
                "stop_votes": tf.identity(stop_vote),
            }

        def step(batch, stop_vote):
            out = backend.run_step(lambda replica_batch: replica_step(replica_batch, stop_vote), batch)
            for key in self.sums:
                self.sums[key].assign_add(tf.cast(out[key], tf.float64))
            self.state.step.assign_add(1)
            return out["stop_votes"]

        return tf.function(step, jit_compile=cfg.train.jit_compile or None, reduce_retracing=True)

    def _set_phase(self, epoch: int) -> None:
        phase = 1 if epoch < self.cfg.train.epochs else 2
        if phase == self._phase:
            return
        if modellib.MODELS[self.cfg.model.name].transfer:
            modellib.set_transfer_phase(self.model.get_layer("classifier"), phase, self.cfg.model.unfreeze_top)
            log.info("phase %d: %s, %d trainable tensors", phase,
                     "feature extraction" if phase == 1 else f"fine-tuning the top {self.cfg.model.unfreeze_top} "
                     "backbone layers", len(self.model.trainable_variables))
        self._phase = phase
        self._step_fn = self._make_step_fn()

    def _vote(self, stop) -> tf.Tensor:
        return self._votes[stop.requested]

    def _read_sums(self) -> dict[str, float]:
        values = {k: float(v.numpy()) for k, v in self.sums.items()}
        for v in self.sums.values():
            v.assign(0.0)
        return values

    # --- an epoch ---------------------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, total_epochs: int, stop, save) -> None:
        cfg = self.cfg
        self._set_phase(epoch)
        first = int(self.state.step.numpy()) - epoch * self.steps_per_epoch
        steps_left = self.steps_per_epoch - first

        def dataset_fn(shard):
            ds = datalib.train_dataset(self.train_images, self.train_labels, cfg.data, shard,
                                       seed=cfg.train.seed, epoch=epoch, skip_batches=first)
            return ds.take(steps_left)

        dataset = self.backend.distribute_dataset(dataset_fn, cfg.train.batch_size)
        progress = EpochProgress(epoch + 1, total_epochs, self.steps_per_epoch, first, cfg.train.batch_size,
                                 enabled=cfg.run.progress and self.backend.is_chief)
        log_every = cfg.run.log_every_steps or max(1, min(100, self.steps_per_epoch // 4))
        epoch_totals = dict.fromkeys(self.sums, 0.0)
        interval_start = time.perf_counter()
        interval_steps = 0
        step = int(self.state.step.numpy())  # counted here from now on: reading the variable every step is a sync
        votes = None
        for batch in dataset:
            if self.writers and not self._images_logged:
                self.writers.log_images(batch, step)
                self._images_logged = True
            previous_votes, votes = votes, self._step_fn(batch, self._vote(stop))
            step += 1
            # The previous step's stop votes, read while this step runs: on a GPU, reading this step's would make
            # the host wait for it before queuing the next. Every worker reads the same sums at the same step, so
            # all still stop after the same step (one later than the request).
            if previous_votes is not None:
                stop.agree(float(previous_votes))
            if self.writers and not self._first_step_logged:
                self.writers.log_scalar("seconds_to_first_step", time.time() - PROCESS_START, step)
                self._first_step_logged = True
            interval_steps += 1
            last_of_epoch = step % self.steps_per_epoch == 0
            if interval_steps % log_every == 0 or last_of_epoch or stop:
                sums = self._read_sums()
                elapsed = time.perf_counter() - interval_start
                for k in epoch_totals:
                    epoch_totals[k] += sums[k]
                lr = float(self._current_lr())
                stats = _rates(sums, elapsed, interval_steps)
                progress.update(interval_steps, loss=stats["loss"], top1=stats["top1"], lr=lr,
                                images_per_second=stats["images_per_second"])
                if self.writers:
                    self.writers.log_train(step, stats, lr)
                self._check_diverged(stats["loss"], step, lr)
                interval_start, interval_steps = time.perf_counter(), 0
            if stop:
                break
            if step % cfg.checkpoint.every_steps == 0 and not last_of_epoch:
                save()
        if votes is not None:
            stop.agree(float(votes))  # the last step's: there was no next step to read them during
        progress.close()
        if epoch_totals["count"]:
            rates = _rates(epoch_totals, progress.elapsed, 1)
            log.info("epoch %d/%d  step %d  loss %.4f  top-1 %.4f  top-5 %.4f  %.0f img/s", epoch + 1, total_epochs,
                     int(self.state.step.numpy()), rates["loss"], rates["top1"], rates["top5"],
                     epoch_totals["count"] / max(progress.elapsed, 1e-9))

    def _check_diverged(self, loss: float, step: int, lr: float) -> None:
        """Stop a run whose loss stays NaN/inf: every later step would be wasted GPU time. One bad interval is
        tolerated (float16 loss scaling skips an overflowing step and recovers by itself)."""
        self._bad_intervals = 0 if math.isfinite(loss) else self._bad_intervals + 1
        if self._bad_intervals >= 2:
            raise UserError(f"training diverged: the loss is {loss} at step {step} (learning rate {lr:.3g}); lower "
                            "optim.lr, add optim.warmup_epochs or optim.clip_norm, and start a new run.dir")

    def _current_lr(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)

    def validate(self, epoch: int) -> dict[str, float] | None:
        if self.splits.x_val is None:
            return None
        shard = self.backend.shard(self.cfg.train.eval_batch_size * self.backend.num_workers)
        ds = datalib.eval_dataset(self.splits.x_val, self.splits.y_val, self.cfg.train.eval_batch_size, shard)
        sums = {"loss_sum": 0.0, "correct1": 0.0, "correct5": 0.0, "count": 0.0}
        for images, labels in ds:
            out = _eval_step(self.model, images, labels)
            for k in sums:
                sums[k] += float(out[k])
        sums = self.backend.all_reduce_sum(sums)
        metrics = {"val_loss": sums["loss_sum"] / sums["count"], "val_top1": sums["correct1"] / sums["count"],
                   "val_top5": sums["correct5"] / sums["count"]}
        log.info("epoch %d validation: loss %.4f  top-1 %.4f  top-5 %.4f", epoch + 1, metrics["val_loss"],
                 metrics["val_top1"], metrics["val_top5"])
        if self.writers:
            self.writers.log_validation(int(self.state.step.numpy()), metrics)
        return metrics


@tf.function(reduce_retracing=True)
def _eval_step(model, images, labels):
    logits = tf.cast(model(images, training=False), tf.float32)
    labels = tf.cast(labels, tf.int32)
    k5 = min(5, logits.shape[-1])
    return {
        "loss_sum": tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)),
        "correct1": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)),
        "correct5": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k5), tf.float32)),
        "count": tf.cast(tf.shape(labels)[0], tf.float32),
    }


def _rates(sums: dict[str, float], elapsed: float, steps: int) -> dict[str, float]:
    count = max(sums["count"], 1.0)
    return {"loss": sums["loss_sum"] / count, "top1": sums["correct1"] / count, "top5": sums["correct5"] / count,
            "images_per_second": sums["count"] / max(elapsed, 1e-9),
            "step_seconds": elapsed / max(steps, 1)}
