"""How long a checkpoint save blocks the training loop: job.checkpoint.CheckpointStore.save to a local run directory
and to gs:// (fake-gcs-server), against TensorFlow's own tf.train.Checkpoint.write of the same objects.

The checkpoint holds what job.train.train puts in it (model, optimizer with its slots, the step and the early-stopping
state), so its size is the trainer's. A save copies the variables into host memory and returns; the write into the
local working copy runs on a thread of its own and the commit (checksums, commit object, pruning; for gs:// the upload
first) after it; the trial then waits, untimed, until both are done (reported as commit_seconds), as they would be long
before the next save.
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
from job.proc import cpu_ticks


def setup_checkpoint(preset: str, overrides: list[str], gcs_url: str = "", gcs_pid: int = 0,
                     upload_timeout: float = 600.0) -> Sides:
    from job.builder import build_run
    from job.checkpoint import CheckpointStore
    from job.config import load_config
    from job.runconfig import store_run_config
    from job.rundir import RunDir

    scratch = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    atexit.register(shutil.rmtree, scratch, True)  # also when the parent gives up before finish()
    cfg = load_config(preset, ["data.name=synthetic", "data.validation_split=0", f"run.dir={scratch / 'run'}",
                               *overrides])
    parts = build_run(cfg, writers=False)  # the objects job.train.train checkpoints
    ckpt, state, model = parts.checkpoint, parts.state, parts.model
    steps = iter(range(1, 1_000_000))

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

    def timed_save(run: RunDir, store: CheckpointStore) -> dict:
        state.step.assign(next(steps))
        _quiet(gcs_pid)
        began, cpu = time.perf_counter(), time.process_time()
        store.save(ckpt, int(state.step.numpy()))
        # cpu_seconds: of every thread of the process, while the save blocked (the commit thread only just starts)
        result = {"blocking_seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu}
        began = time.perf_counter()
        if not run.flush(upload_timeout):
            raise RuntimeError(f"the commit to {run.url} did not finish within {upload_timeout} s")
        result["commit_seconds"] = time.perf_counter() - began
        run.raise_if_failed()
        return result

    trials = {"TF write": tf_write, "local save": lambda: timed_save(parts.run, parts.store)}
    runs = [parts.run]
    if gcs_url:
        gcs_run = RunDir.open(gcs_url, str(scratch / "gcs-work"))
        store_run_config(gcs_run, cfg)
        gcs_store = CheckpointStore(gcs_run, keep=cfg.checkpoint.keep)
        trials["gs:// save"] = lambda: timed_save(gcs_run, gcs_store)
        runs.append(gcs_run)

    def finish() -> dict:
        for run in runs:
            run.close(upload_timeout)
        shutil.rmtree(scratch, ignore_errors=True)
        return {}

    from bench.flops import train_flops_per_image

    info = {"model": cfg.model.name, "parameters": int(model.count_params()), "keep": cfg.checkpoint.keep,
            "train_flops_per_image": train_flops_per_image(model)}
    return Sides(trials=trials, info=info, finish=finish)


def _quiet(server_pid: int, timeout: float = 10.0) -> None:
    """Flush dirty pages, then wait until the process `server_pid` (if any) stops using CPU."""
    os.sync()
    if not server_pid:
        return
    deadline = time.monotonic() + timeout
    last = cpu_ticks(server_pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_ticks(server_pid)
        if now == last:
            return
        last = now

