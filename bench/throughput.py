"""Training throughput: the project's loop (job.loop.Loop with the parts and hooks job.train.train runs with, built by
job.builder) against plain Keras `compile`/`fit` of the same model, batch, optimizer and in-memory data.

Both sides stamp the start of every call of their compiled function, and the step it starts at (the loop through a
wrapper around its step functions, fit through `on_train_batch_begin`, which keeps fit's asynchronous callback
dispatch); a call is one step, or several with `train.steps_per_call` on the loop and the same `steps_per_execution` on
fit. The steady rate is taken between the second and the last call start of a trial, so the per-epoch start-up
(building the dataset, fit's data adapter, the first batch) is reported separately and does not blur the per-step
comparison.
"""
from __future__ import annotations

import atexit
import shutil
import statistics
import tempfile
import time

from bench.worker import Sides


def _scratch(prefix: str) -> str:
    """A run directory for the worker's lifetime (the loop writes TensorBoard files into it)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def _config(preset: str, overrides: list[str], steps: int, run_dir: str):
    from job.config import load_config

    return load_config(preset, [
        "data.name=synthetic", "data.validation_split=0", f"train.max_steps_per_epoch={steps}",
        "train.epochs=100000", "checkpoint.every_steps=1000000000", "run.progress=false", f"run.dir={run_dir}",
        *overrides])


def _steady(starts: list[float], cpu: list[float], ends: list[float], marks: list[int], batch: int,
            total: float) -> dict:
    """Figures of one trial from the wall-clock and process-CPU stamps at each call's start (and, for the loop, the
    wall-clock stamps at each call's end). `marks` is the step count at each call's start, then at the trial's end: a
    call runs one step, or several with train.steps_per_call (the loop) or steps_per_execution (Keras fit)."""
    if len(marks) != len(starts) + 1:
        raise ValueError(f"{len(starts)} calls but {len(marks)} step marks (one per call and one at the end)")
    counts = [b - a for a, b in zip(marks, marks[1:])]  # steps of each call
    intervals = [b - a for a, b in zip(starts, starts[1:])]  # interval i covers call i's counts[i] steps
    cycles, cycle_steps = intervals[1:], counts[1:len(intervals)]  # the first may still wait on the pipeline
    if not cycles:
        raise ValueError(f"a trial needs at least 3 calls to give a steady rate, got {len(starts)}")
    steps = sum(cycle_steps)
    step_seconds = statistics.median(c / n for c, n in zip(cycles, cycle_steps))
    result = {"images_per_second": batch * steps / sum(cycles), "step_seconds": step_seconds,
              # CPU time of every thread of the process over the same steps: on a shared machine, where the wall
              # clock also counts the time other processes hold the cores, the steadier measure of cost
              "cpu_seconds_per_image": (cpu[-1] - cpu[1]) / (batch * steps),
              "steps": marks[-1] - marks[0], "calls": len(starts), "trial_seconds": total,
              # what a trial costs beyond its steps: dataset or data-adapter set-up, the first batch, epoch-end work
              "epoch_overhead_seconds": total - (marks[-1] - marks[0]) * step_seconds}
    if ends:
        # time from the end of one call to the start of the next: the loop's own work between steps (the stop votes,
        # step hooks, metrics, next(iterator), which a call of several steps runs inside the graph); meaningful on a
        # CPU, where a call returns when its steps are done. Per step: over the steps of the call it follows, as that
        # work is paid once per call.
        gaps = [s - e for e, s in zip(ends, starts[1:])][1:]
        result["host_seconds_per_call"] = statistics.median(gaps)
        result["host_seconds_per_step"] = statistics.median(g / n for g, n in zip(gaps, counts[1:]))
    return result


def setup_loop(preset: str, overrides: list[str], steps: int, side: str = "loop") -> Sides:
    import tensorflow as tf

    from job.builder import build_run
    from job.hooks import default_hooks
    from job.loop import Loop
    from job.stopping import StopRequest

    # The parts and hooks of job.train.train; checkpoints never fall due (checkpoint.every_steps is huge).
    parts = build_run(_config(preset, overrides, steps, _scratch("bench-loop-")))
    parts.restore_or_initialize()
    loop = Loop(parts, default_hooks(parts), StopRequest())
    starts: list[float] = []
    cpu: list[float] = []
    ends: list[float] = []
    marks: list[int] = []  # loop.step at each call's start (the loop counts a call's steps when it returns)

    def timed(step_fn):  # wraps the one-step and the several-steps function alike
        def timed_step(*args):
            marks.append(loop.step)
            starts.append(time.perf_counter())
            cpu.append(time.process_time())
            out = step_fn(*args)
            ends.append(time.perf_counter())
            return out

        return timed_step

    loop.instrument_step(timed)

    def trial() -> dict:
        for stamps in (starts, cpu, ends, marks):
            stamps.clear()
        epoch = loop.step // parts.steps_per_epoch
        began = time.perf_counter()
        loop.run_epoch(epoch)
        total = time.perf_counter() - began
        result = _steady(starts, cpu, ends, [*marks, loop.step], parts.cfg.train.batch_size, total)
        if tf.config.list_physical_devices("GPU"):
            for key in ("host_seconds_per_step", "host_seconds_per_call"):  # a call returns before the GPU is
                result.pop(key)  # done with its steps: not meaningful
        return result

    return Sides(trials={side: trial}, info=_model_info(parts.cfg, parts.model))


def setup_fit(preset: str, overrides: list[str], steps: int, side: str = "fit") -> Sides:
    import keras

    from job import data as datalib
    from job.builder import configure
    from job.models.assembly import build_full_model
    from job.optim import make_optimizer

    cfg = _config(preset, overrides, steps, _scratch("bench-fit-"))
    cfg = configure(cfg)  # seed and precision policy, as the trainer
    splits = datalib.load_splits(cfg.data, cfg.train.seed)
    steps_per_epoch = min(datalib.steps_per_epoch(len(splits.x_train), cfg.train.batch_size), steps)
    model = build_full_model(cfg, splits.num_classes, splits.x_train.shape[1:])
    model.get_layer("preprocess").set_stats(datalib.fit_preprocessing(splits.x_train, cfg.data.normalization))
    # jit_compile follows the trainer's setting: Keras' default "auto" picks XLA, which on CPU runs these models
    # several times slower (docs/performance.md), so "auto" would be a baseline nobody should use. Steps per call
    # follow the trainer's train.steps_per_call: Keras' steps_per_execution.
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  jit_compile=cfg.train.jit_compile, steps_per_execution=cfg.train.steps_per_call)
    starts: list[float] = []
    cpu: list[float] = []
    marks: list[int] = []

    class StepStarts(keras.callbacks.Callback):  # called once per call: `batch` is the call's first step
        def on_train_batch_begin(self, batch, logs=None):
            marks.append(batch)
            starts.append(time.perf_counter())
            cpu.append(time.process_time())

    stamps = StepStarts()

    def trial() -> dict:
        for record in (starts, cpu, marks):
            record.clear()
        began = time.perf_counter()
        model.fit(splits.x_train, splits.y_train, batch_size=cfg.train.batch_size, epochs=1,
                  steps_per_epoch=steps_per_epoch, shuffle=True, verbose=0, callbacks=[stamps])
        total = time.perf_counter() - began
        return _steady(starts, cpu, [], [*marks, steps_per_epoch], cfg.train.batch_size, total)

    return Sides(trials={side: trial}, info=_model_info(cfg, model))


def _model_info(cfg, model) -> dict:
    from bench.flops import train_flops_per_image

    return {"model": cfg.model.name, "batch_size": cfg.train.batch_size, "optimizer": cfg.optim.name,
            "precision": cfg.train.precision, "jit_compile": cfg.train.jit_compile,
            "steps_per_call": cfg.train.steps_per_call,
            "parameters": int(model.count_params()), "train_flops_per_image": train_flops_per_image(model)}
