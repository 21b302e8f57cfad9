"""How long a checkpoint save blocks the training loop: job.checkpoint.CheckpointStore.save to a local run directory
and to gs:// (fake-gcs-server), against TensorFlow's own tf.train.Checkpoint.write of the same objects.

The checkpoint holds what job.train.train puts in it (model, optimizer with its slots, the step and the early-stopping
state), so its size is the trainer's. A gs:// save writes to the local working copy and queues the upload; the trial
then waits, untimed, until the upload is done (reported as upload_seconds), as it would be long before the next save.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.worker import Sides


def setup_checkpoint(preset: str, overrides: list[str], gcs_url: str = "", upload_timeout: float = 600.0) -> Sides:
    import tensorflow as tf

    from job import data as datalib
    from job.checkpoint import CheckpointStore
    from job.config import load_config
    from job.optim import make_optimizer
    from job.rundir import RunDir
    from job.runfiles import build_full_model, prepare_run_config
    from job.runtime import configure
    from job.train import TrainState

    scratch = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
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
                               epochs_without_improvement=state.epochs_without_improvement)
    steps = iter(range(1, 1_000_000))

    def tf_write() -> dict:
        target = scratch / f"tf-write-{next(steps)}"
        began = time.perf_counter()
        ckpt.write(str(target / "ckpt"))
        seconds = time.perf_counter() - began
        size = sum(f.stat().st_size for f in target.iterdir())
        shutil.rmtree(target)
        return {"blocking_seconds": seconds, "bytes": size}

    def timed_save(store: CheckpointStore) -> dict:
        state.step.assign(next(steps))
        began = time.perf_counter()
        store.save(ckpt, int(state.step.numpy()))
        return {"blocking_seconds": time.perf_counter() - began}

    local_run = RunDir.open(str(scratch / "run"))
    prepare_run_config(local_run, cfg, write=True)
    local_store = CheckpointStore(local_run, keep=cfg.checkpoint.keep)
    trials = {"TF write": tf_write, "local save": lambda: timed_save(local_store)}
    runs = [local_run]

    if gcs_url:
        gcs_run = RunDir.open(gcs_url, str(scratch / "gcs-work"))
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
