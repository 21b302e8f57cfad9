"""Helpers for tests that run the real trainer as a separate process, as users do."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts.launch_local import free_loopback_ports  # noqa: F401 - the launcher's own, for the tests too

ROOT = Path(__file__).resolve().parents[2]




def trainer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
               JOB_PROGRESS="log")
    env.update(extra)
    return env


def user_env(**extra: str) -> dict[str, str]:
    """trainer_env as a user's terminal has it: TensorFlow's C++ log level not lowered, so anything printed after
    TensorFlow's import shows."""
    env = trainer_env(**extra)
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    return env


# The LiteRT exports (conversion, int8 calibration, their test-set evaluation) cost seconds at the end of every run;
# the suite's runs switch them off unless a test asks for them (export.litert=true: tests/support/trained_model.py's
# run).
LITERT_OFF = "export.litert=false"


def without_litert(args) -> list[str]:
    """`train ...` arguments with LITERT_OFF among the overrides (which argparse takes as one block) unless they set
    export.litert themselves; any other command's as they are."""
    args = list(args)
    if args[:1] != ["train"] or any(a.startswith("export.litert=") for a in args):
        return args
    overrides = [i for i, a in enumerate(args) if "=" in a and not a.startswith("-")]
    at = overrides[-1] + 1 if overrides else len(args)
    return [*args[:at], LITERT_OFF, *args[at:]]


def job_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "job", *without_litert(args)]


def run_job(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(job_command(*args), cwd=ROOT, env=env or trainer_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_job(*args: str, env: dict | None = None, log_path: Path | None = None) -> subprocess.Popen:
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(job_command(*args), cwd=ROOT, env=env or trainer_env(), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def start_with_held_write(step: int, train_args: list[str], events: Path, log_path: Path,
                          *hook_args: str) -> subprocess.Popen:
    """`python -m tests.support.hooked_train --hold-write STEP [hook_args] -- TRAIN ARGS` as a process, returned once it
    has announced that the background write of ckpt-STEP is held half-done."""
    command = [sys.executable, "-m", "tests.support.hooked_train", "--events", str(events),
               "--hold-write", str(step), *hook_args, "--", *train_args]
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=trainer_env(), stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: f"held for a test: writing checkpoint ckpt-{step}" in log_path.read_text(), timeout=300,
             process=process, what=f"the write of ckpt-{step} to be held")
    return process


def committed_steps(run_dir: Path) -> list[int]:
    """Steps with a commit object in a local run directory: what a resume may use."""
    steps = []
    for path in (run_dir / "checkpoints").glob("ckpt-*.commit.json"):
        steps.append(int(path.name.split("-")[1].split(".")[0]))
    return sorted(steps)


def committed_prefix(run_dir: Path, step: int | None = None) -> str:
    """The TF checkpoint prefix the commit object of `step` (default: the newest) names in a local run directory."""
    step = committed_steps(run_dir)[-1] if step is None else step
    commit = json.loads((run_dir / "checkpoints" / f"ckpt-{step}.commit.json").read_text())
    return str(run_dir / "checkpoints" / commit["prefix"])


def wait_for(predicate, timeout: float, process: subprocess.Popen | None = None, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the trainer exited with {process.returncode} before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_hard(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM by pid, SIGKILL if it has not exited after `timeout` s. A process that already exited is only reaped
    (its pid may belong to someone else by now)."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
