"""Start-up of real training processes: `python -m job train` started fresh, then started again on the same run
directory so it resumes from the checkpoint the first one left. The figures come from what the trainer itself logs to
TensorBoard (seconds_to_first_step from process start, step_seconds, checkpoint_blocking_seconds); peak RSS from the
kernel's accounting of the finished child (wait4)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.events import read_scalars
from bench.worker import ROOT


class TrainRunError(RuntimeError):
    pass


def train_run(preset: str, overrides: list[str], run_dir: str, work_dir: Path, log_path: Path,
              env: dict[str, str] | None = None, timeout: float = 900.0) -> dict:
    """Run the trainer to its end; the figures of this process start."""
    work_dir.mkdir(parents=True, exist_ok=True)
    logs = (work_dir if run_dir.startswith("gs://") else Path(run_dir)) / "logs" / "train"
    before = {p.name for p in logs.glob("events.out.tfevents.*")} if logs.is_dir() else set()
    command = [sys.executable, "-m", "job", "train", "--config", preset, *overrides, f"run.dir={run_dir}",
               f"run.work_dir={work_dir}"]
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    began = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
        status, rusage = _wait(proc, timeout)
    wall = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(f"  | {line}" for line in log_path.read_text(errors="replace").splitlines()[-30:])
        raise TrainRunError(f"`{' '.join(command)}` exited with {code}\n{tail}")
    # only this process's event file: a resumed run directory also holds the first start's
    fresh = [p for p in logs.glob("events.out.tfevents.*") if p.name not in before]
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in fresh:
        for tag, values in read_scalars_file(path).items():
            scalars.setdefault(tag, []).extend(values)
    if "seconds_to_first_step" not in scalars:
        raise TrainRunError(f"{logs} has no seconds_to_first_step scalar from this start (tags: {sorted(scalars)})")
    step_seconds = sorted(scalars.get("step_seconds", []))
    return {
        "seconds_to_first_step": scalars["seconds_to_first_step"][0][1],
        "first_step": scalars["seconds_to_first_step"][0][0],
        # the last logged interval is one steady step (the first one includes tracing)
        "steady_step_seconds": step_seconds[-1][1] if len(step_seconds) > 1 else None,
        "checkpoint_blocking_seconds": [v for _, v in scalars.get("checkpoint_blocking_seconds", [])],
        "wall_seconds": wall,
        "peak_rss_mb": rusage.ru_maxrss / 1024.0,
    }


def read_scalars_file(path: Path) -> dict[str, list[tuple[int, float]]]:
    return read_scalars(path.parent, names=[path.name])


def _wait(proc: subprocess.Popen, timeout: float):
    """wait4 (the child's own peak RSS, which Popen.wait does not give), with a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise TrainRunError(f"the trainer (pid {proc.pid}) did not finish within {timeout:.0f} s")
        time.sleep(0.1)
