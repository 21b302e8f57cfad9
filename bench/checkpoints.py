"""How long a checkpoint save blocks the training loop: job.checkpoint.CheckpointStore.save to a local run directory
and to gs:// (fake-gcs-server), against TensorFlow's own tf.train.Checkpoint.write of the same objects.

The checkpoint holds what job.train.train puts in it (model, optimizer with its slots, the step and the early-stopping
state), so its size is the trainer's. A gs:// save writes to the local working copy and queues the upload; the trial
then waits, untimed, until the upload is done (reported as upload_seconds), as it would be long before the next save.
Every trial starts from a quiet machine, as a save in training does (saves are minutes apart): os.sync(), so no trial
pays for writing back the dirty pages of the one before, and a wait until fake-gcs-server (which here shares the
cores; a real bucket does not) has finished digesting the last upload.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.worker import Sides


def setup_checkpoint(preset: str, overrides: list[str], gcs_url: str = "", gcs_pid: int = 0,
                     upload_timeout: float = 600.0) -> Sides:
    import tensorflow as tf

    from job import data as datalib
    from job.checkpoint import CheckpointStore
    from job.config import load_config
    from job.optim import make_optimizer
    from job.rundir import RunDir
    from job.runfiles import build_full_model, prepare_run_config
    from job.runtime import configure
    from job.train import TrainState, random_state_variables

    scratch = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    atexit.register(shutil.rmtree, scratch, True)  # also when the parent gives up before finish()
    cfg = load_config(preset, ["data.name=synthetic", "data.validation_split=0", f"run.dir={scratch / 'run'}",
                               *overrides])
    configure(cfg)
    splits = datalib.load_splits(cfg.data, cfg.train.seed)
    steps_per_epoch = datalib.steps_per_epoch(len(splits.x_train), cfg.train.batch_size)
    model = build_full_model(cfg, splits.num_classes, splits.x_train.shape[1:])
    optimizer = make_optimizer(cfg, steps_per_epoch)
    state = TrainState.create()
    optimizer.build(model.trainable_variables)
    # the same objects job.train.train checkpoints
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=state.step, best_val_top1=state.best_val_top1,
                               epochs_without_improvement=state.epochs_without_improvement,
                               rng=random_state_variables(model))
    steps = iter(range(1, 1_000_000))

    submitted: list[float] = []

    def timing_submit(run: RunDir) -> None:
        """Time RunDir.submit, which runs the commit (CRC32C, commit object, pruning) inline for a local run and
        only queues it for a remote one: the part of a save that is not TensorFlow's write."""
        submit = run.submit

        def timed(task, what):
            began = time.perf_counter()
            submit(task, what)
            submitted.append(time.perf_counter() - began)

        run.submit = timed

    def tf_write() -> dict:
        target = scratch / "tf-write"  # one folder, as the store keeps writing into its checkpoints/ folder
        _quiet(gcs_pid)
        began, cpu = time.perf_counter(), time.process_time()
        ckpt.write(str(target / f"ckpt-{next(steps)}"))
        result = {"blocking_seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu,
                  "bytes": sum(f.stat().st_size for f in target.iterdir())}
        for f in target.iterdir():
            f.unlink()
        return result

    def timed_save(store: CheckpointStore) -> dict:
        state.step.assign(next(steps))
        _quiet(gcs_pid)
        submitted.clear()
        began, cpu = time.perf_counter(), time.process_time()
        store.save(ckpt, int(state.step.numpy()))
        # cpu_seconds: of every thread of the process, while the save blocked (the upload thread only just starts)
        return {"blocking_seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu,
                "commit_seconds": sum(submitted)}

    local_run = RunDir.open(str(scratch / "run"))
    timing_submit(local_run)
    prepare_run_config(local_run, cfg, write=True)
    local_store = CheckpointStore(local_run, keep=cfg.checkpoint.keep)
    trials = {"TF write": tf_write, "local save": lambda: timed_save(local_store)}
    runs = [local_run]

    if gcs_url:
        gcs_run = RunDir.open(gcs_url, str(scratch / "gcs-work"))
        timing_submit(gcs_run)
        prepare_run_config(gcs_run, cfg, write=True)
        gcs_store = CheckpointStore(gcs_run, keep=cfg.checkpoint.keep)
        runs.append(gcs_run)

        def gcs_save() -> dict:
            result = timed_save(gcs_store)
            began = time.perf_counter()
            if not gcs_run.flush(upload_timeout):
                raise RuntimeError(f"the upload to {gcs_url} did not finish within {upload_timeout} s")
            result["upload_seconds"] = time.perf_counter() - began
            gcs_run.raise_if_failed()
            return result

        trials["gs:// save"] = gcs_save

    def finish() -> dict:
        for run in runs:
            run.close(upload_timeout)
        shutil.rmtree(scratch, ignore_errors=True)
        return {}

    info = {"model": cfg.model.name, "parameters": int(model.count_params()), "keep": cfg.checkpoint.keep}
    return Sides(trials=trials, info=info, finish=finish)


def _quiet(server_pid: int, timeout: float = 10.0) -> None:
    """Flush dirty pages, then wait until the process `server_pid` (if any) stops using CPU."""
    os.sync()
    if not server_pid:
        return
    deadline = time.monotonic() + timeout
    last = _cpu_ticks(server_pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _cpu_ticks(server_pid)
        if now == last:
            return
        last = now


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime
