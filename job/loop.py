"""The training loop: one loop for every backend, resumable at any step; everything around the step is a hook
(job/hooks/base.py: the events, the read-only State hooks see, and the Stop and Save they may return).

Resuming exactly needs only the global step: the epoch is step // steps_per_epoch, the data order and augmentation of
an epoch are pure functions of (seed, epoch, batch index), and model, optimizer and RNG state are in the checkpoint,
with the best validation top-1 and the epochs since it improved, which the loop keeps.
"""
from __future__ import annotations

import logging
import math
import time
import types
from collections.abc import Callable

import tensorflow as tf

from job import data as datalib
from job.builder import RunParts
from job.hooks.base import Event, Hook, RunInfo, Save, State, Stop
from job.metrics import AVERAGED_PREFIX, SUM_KEYS, best_metric, interval_stats, rates, validation_metrics, zero_sums
from job.models.assembly import is_transfer, set_phase
from job.precise_bn import recalibrate, trainable_batchnorms
from job.step import eval_step, make_multi_step, make_train_step
from job.stopping import StopRequest

log = logging.getLogger("job")

FINISHED, STOPPED, PREEMPTED = "finished", "stopped", "preempted"


def recalibrate_at(parts: RunParts, step: int, batches: int) -> int:
    """BatchNorm statistics of `parts.model` recomputed (job/precise_bn.py) from `batches` global batches of the epoch
    that `step` ends or is in, as train.seed draws them; returns how many layers."""
    epoch = max(0, step - 1) // parts.steps_per_epoch
    dataset = parts.backend.distribute_dataset(
        lambda shard: datalib.calibration_dataset(parts.splits.x_train, shard, parts.cfg.train.seed, epoch, batches),
        parts.cfg.train.batch_size)
    return recalibrate(parts.model, parts.backend, dataset)


class Loop:
    def __init__(self, parts: RunParts, hooks: list[Hook], stop: StopRequest):
        self.parts, self.cfg, self.hooks, self.stop = parts, parts.cfg, hooks, stop
        self._step_hooks = [h for h in hooks if h.every_steps > 0]
        backend = parts.backend
        self.info = RunInfo(cfg=parts.cfg, url=parts.run.url, local=parts.run.local,
                            steps_per_epoch=parts.steps_per_epoch, total_epochs=parts.total_epochs,
                            total_steps=parts.total_steps, worker_index=backend.worker_index,
                            num_workers=backend.num_workers, is_chief=backend.is_chief)
        self.step = parts.step  # counted on the host from now on: reading the variable every step is a sync
        self.saved_step = -1
        # Converted once: converting the arrays every epoch re-traces the pipeline and grows memory by the dataset's
        # size per epoch until it plateaus (measured: +1.6 GB after 20 CIFAR epochs).
        self.train_images = datalib.as_images(parts.splits.x_train)  # a streamed set stays on disk
        self.train_labels = tf.constant(parts.splits.y_train, tf.int32)
        self.sums = {k: tf.Variable(0.0, dtype=tf.float64, trainable=False) for k in SUM_KEYS}
        self._phase = None
        self._plain_step_fn = None  # the compiled step of the current phase
        self._step_fn = None  # the same, as instrument_step wrapped it
        self._plain_steps_fn = None  # several steps per call (train.steps_per_call), around the step
        self._steps_fn = None
        self._instrument: Callable = lambda step_fn: step_fn
        self._first_step_done = False
        self._calibrated_step = -1  # the step whose weights the BatchNorm statistics were last recomputed for

    # --- what the loop and the benchmarks use ---------------------------------------------------------------------
    def save(self, metrics: dict | None = None) -> None:
        """Checkpoint the current step now (every worker must call this at the same step)."""
        self.saved_step = self.step
        parts, started = self.parts, time.perf_counter()
        if parts.backend.is_chief:
            parts.store.save(parts.checkpoint, self.step, metrics)
        elif parts.backend.num_workers > 1:
            # Collective-backed variables need every worker to take part in reading them; only the chief writes.
            parts.store.snapshots(parts.checkpoint).take()
        # Includes any wait for the previous save's background write (job/snapshot.py logs it).
        self._emit(Event.CHECKPOINT_SAVED, saved_step=self.step, blocking_seconds=time.perf_counter() - started)

    def learning_rate(self) -> float:
        lr = self.parts.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)

    def instrument_step(self, wrap: Callable) -> None:
        """Wrap every step function this loop makes (now and after a phase change): the benchmarks time the calls."""
        self._instrument = wrap
        if self._plain_step_fn is not None:
            self._step_fn = wrap(self._plain_step_fn)
            self._steps_fn = wrap(self._plain_steps_fn)

    # --- the run -------------------------------------------------------------------------------------------------
    def run(self, restored: bool) -> str:
        """Train until the last epoch or an agreed stop; the last step is saved. Returns the outcome."""
        parts = self.parts
        self.saved_step = self.step if restored else -1
        self._emit(Event.TRAIN_START)
        while self.step < parts.total_steps:
            self.stop.settle(parts.backend)  # requests made between steps (epoch-end hooks, a signal meanwhile)
            if self.stop:
                break
            epoch = self.step // parts.steps_per_epoch
            train = self.run_epoch(epoch)
            if self.stop:
                break
            self.recalibrate()
            validation = self.validate()
            if self.parts.ema is not None:
                validation = self._validate_averaged(validation)
            self._track_best(validation)
            self._emit(Event.EPOCH_END, epoch=epoch, train=train, validation=validation)
            self.save(validation)
        if self.saved_step != self.step:
            if not self.stop.preempted:  # a preemption's save must be quick; a resume recalibrates at the epoch end
                self.recalibrate()
                if self.parts.ema is not None:
                    with self.parts.ema.swapped():
                        self.recalibrate(force=True)
            self.save()  # every worker takes part; a run resumed at its very end has nothing new to save
        return PREEMPTED if self.stop.preempted else STOPPED if self.stop else FINISHED

    def end(self, outcome: str, evaluation: dict | None = None) -> None:
        self._emit(Event.TRAIN_END, outcome=outcome, stop_reason=self.stop.reason or None, evaluation=evaluation)

    def fail(self, error: BaseException) -> None:
        self._emit(Event.FAILURE, error=error)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """The steps left in `epoch`, or fewer if a stop is agreed; returns the train metrics of the steps run."""
        cfg, parts = self.cfg, self.parts
        self._set_phase(epoch)
        first = self.step - epoch * parts.steps_per_epoch

        def dataset_fn(shard):
            ds = datalib.train_dataset(self.train_images, self.train_labels, cfg.data, shard,
                                       seed=cfg.train.seed, epoch=epoch, skip_batches=first)
            return ds.take(parts.steps_per_epoch - first)

        dataset = parts.backend.distribute_dataset(dataset_fn, cfg.train.batch_size)
        self._emit(Event.EPOCH_START, epoch=epoch)
        log_every = cfg.run.log_every_steps or max(1, min(100, parts.steps_per_epoch // 4))
        epoch_sums, epoch_start = zero_sums(), time.perf_counter()
        interval_start, interval_steps = epoch_start, 0
        votes = None
        iterator, steps_left = iter(dataset), parts.steps_per_epoch - first
        while steps_left > 0:
            count = self._call_length(steps_left, interval_steps, log_every)
            if count == 1 or not self._first_step_done:  # the first step alone: on_first_step gets its batch
                count, batch = 1, next(iterator)
                previous_votes, votes = votes, self._step_fn(batch, self.stop.votes)
            else:
                previous_votes, votes = votes, self._steps_fn(iterator, tf.constant(count), self.stop.votes)
            self.step += count
            steps_left -= count
            # The previous step's stop votes, read while this step runs: on a GPU, reading this step's would make
            # the host wait for it before queuing the next. Every worker reads the same sums at the same step, so
            # all still stop after the same step (one later than the request).
            if previous_votes is not None:
                self.stop.agree(previous_votes)
            if not self._first_step_done:
                self._first_step_done = True
                self._emit(Event.FIRST_STEP, batch=batch)
            interval_steps += count
            if interval_steps % log_every == 0 or self.step % parts.steps_per_epoch == 0 or self.stop:
                sums = self._read_sums()
                for key in SUM_KEYS:
                    epoch_sums[key] += sums[key]
                stats = interval_stats(sums, time.perf_counter() - interval_start, interval_steps)
                self._emit(Event.INTERVAL_END, train={**stats, "lr": self.learning_rate(), "steps": interval_steps})
                interval_start, interval_steps = time.perf_counter(), 0
            if self.stop:
                break
            for hook in self._step_hooks:
                if self.step % hook.every_steps == 0:
                    self._act(hook, hook.handle(self._state(Event.STEP)), Event.STEP)
        if votes is not None:
            self.stop.agree(votes)  # the last step's: there was no next step to read them during
        elapsed = time.perf_counter() - epoch_start
        return {**rates(epoch_sums), "images_per_second": epoch_sums["count"] / max(elapsed, 1e-9)}

    def recalibrate(self, force: bool = False) -> None:
        """BatchNorm statistics recomputed for the weights as they are now (job/precise_bn.py), from K training batches
        of the epoch trained last; every worker calls this at the same step. A no-op without BatchNorm layers, with
        train.bn_recalibration_batches=0, or when done for this step already (unless `force`: the averaged
        weights')."""
        batches = self.cfg.train.bn_recalibration_batches
        done = self._calibrated_step == self.step and not force
        if not batches or done or not trainable_batchnorms(self.parts.model):
            return
        started = time.perf_counter()
        layers = recalibrate_at(self.parts, self.step, batches)
        if not force:
            self._calibrated_step = self.step
        log.debug("BatchNorm statistics of %d layers recomputed from %d batches at step %d in %.2f s", layers,
                  batches, self.step, time.perf_counter() - started)

    def _validate_averaged(self, validation: dict[str, float] | None) -> dict[str, float] | None:
        """The averaged weights (job/ema.py), their BatchNorm statistics recomputed for them, validated beside the
        trained ones: `validation` with ema_val_loss, ema_val_top1 and ema_val_top5 added."""
        with self.parts.ema.swapped():
            self.recalibrate(force=True)
            averaged = self.validate()
        if averaged is None:
            return validation
        return {**validation, **{AVERAGED_PREFIX + k: v for k, v in averaged.items()}}

    def validate(self) -> dict[str, float] | None:
        """val_loss, val_top1, val_top5 over the whole validation split (each worker its shard), or None without one."""
        splits, backend = self.parts.splits, self.parts.backend
        if splits.x_val is None:
            return None
        batch = self.cfg.train.eval_batch_size
        dataset = datalib.eval_dataset(splits.x_val, splits.y_val, batch, backend.shard(batch * backend.num_workers))
        sums = zero_sums()
        for images, labels in dataset:
            for key, value in eval_step(self.parts.model, images, labels).items():
                sums[key] += float(value)
        return validation_metrics(backend.all_reduce_sum(sums))

    # --- internals -----------------------------------------------------------------------------------------------
    def _state(self, event: Event, **fields) -> State:
        state = self.parts.state
        best = float(state.best_val_top1.numpy())
        for key in ("train", "validation", "evaluation"):
            if fields.get(key) is not None:
                fields[key] = types.MappingProxyType(dict(fields[key]))  # read-only, and a copy
        epoch = fields.pop("epoch", min(self.step // self.parts.steps_per_epoch, self.parts.total_epochs - 1))
        return State(event=event, run=self.info, step=self.step, epoch=epoch, lr=self.learning_rate(),
                     best_val_top1=best if best >= 0 else None,
                     epochs_without_improvement=int(state.epochs_without_improvement.numpy()), **fields)

    def _emit(self, event: Event, **fields) -> None:
        state = self._state(event, **fields)
        for hook in self.hooks:
            self._act(hook, hook.handle(state), event)

    def _act(self, hook: Hook, action, event: Event) -> None:
        """What a hook returned: a stop request, a save, or nothing."""
        if action is None:
            return
        if isinstance(action, Stop):
            self.stop.request(action.reason, action.kind)
        elif isinstance(action, Save) and event in (Event.STEP, Event.INTERVAL_END, Event.EPOCH_END):
            self.save(dict(action.metrics) if action.metrics else None)
        else:
            raise TypeError(f"{type(hook).__name__} returned {action!r} at {event.value}; hooks return Stop(...), "
                            f"Save() (at step, interval and epoch events) or None")

    def _track_best(self, validation: dict | None) -> None:
        """The best validation top-1 so far and the epochs since it improved: in the checkpoint, so a resume goes on
        counting (early stopping, the tuner's objective and best-checkpoint selection read them)."""
        metric = best_metric(self.cfg)
        if not validation or not math.isfinite(validation[metric]):
            return
        state = self.parts.state
        if validation[metric] > state.best_val_top1.numpy():
            state.best_val_top1.assign(validation[metric])
            state.epochs_without_improvement.assign(0)
        else:
            state.epochs_without_improvement.assign_add(1)

    def _set_phase(self, epoch: int) -> None:
        phase = 1 if epoch < self.cfg.train.epochs else 2
        if phase == self._phase:
            return
        if is_transfer(self.cfg):
            set_phase(self.parts.model, self.cfg, phase)
            log.info("phase %d: %s, %d trainable tensors", phase,
                     "feature extraction" if phase == 1 else f"fine-tuning the top {self.cfg.model.unfreeze_top} "
                     "backbone layers", len(self.parts.model.trainable_variables))
        self._phase = phase
        self._plain_step_fn = make_train_step(self.parts, self.sums)
        self._step_fn = self._instrument(self._plain_step_fn)
        self._plain_steps_fn = make_multi_step(self._plain_step_fn)
        self._steps_fn = self._instrument(self._plain_steps_fn)

    def _call_length(self, steps_left: int, interval_steps: int, log_every: int) -> int:
        """Steps in the next call: train.steps_per_call, but never past the epoch's end, the next metrics read or the
        next step a step hook asked for (the periodic checkpoint is one), so everything that happens at a step happens
        at the step it would with one step per call."""
        count = min(self.cfg.train.steps_per_call, steps_left, log_every - interval_steps % log_every)
        for hook in self._step_hooks:
            count = min(count, hook.every_steps - self.step % hook.every_steps)
        return max(1, count)

    def _read_sums(self) -> dict[str, float]:
        values = {k: float(v.numpy()) for k, v in self.sums.items()}
        for v in self.sums.values():
            v.assign(0.0)
        return values
