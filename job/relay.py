"""`python -m job relay`: pass a pod's SIGTERM on to the trainers of an MPIJob, which Kubernetes cannot reach.

In a Kubeflow MPIJob the trainers (ranks) are not the containers' main processes: a worker container runs sshd, and
the ranks are grandchildren of it (sshd -> orted -> python -m job train); the launcher container runs mpirun. When a
pod is preempted, SIGTERM goes to sshd or mpirun only:

- sshd dies and takes the ranks with it, uncommitted, when the grace period ends;
- mpirun (Open MPI 4) answers SIGTERM by killing the ranks within seconds.

So both containers run their command under this relay:

- `--to descendants` (workers): SIGTERM goes to every `python -m job` process below the command; once they have
  exited (the trainer commits a checkpoint and exits 75) the command itself gets SIGTERM.
- `--to child-as-usr1` (launcher): the command (mpirun) gets SIGUSR1, which Open MPI passes on to every rank without
  killing them; the trainer treats SIGUSR1 like SIGTERM.

Either way every rank asks to stop, the stop is agreed through the next step's all-reduce, the chief commits, and the
relay exits with the command's exit code (75 from mpirun when the ranks stopped that way).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from job.proc import stat_fields

log = logging.getLogger(__name__)

TARGETS = ("descendants", "child-as-usr1")
_TRAINER_ARGV = ["-m", "job"]  # how a trainer's command line reads (python -m job train ...)


def relay(command: list[str], to: str, poll_seconds: float = 0.5) -> int:
    """Run `command`; on SIGTERM/SIGINT pass the stop on as `to` says; return the command's exit code."""
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {TARGETS}, not {to!r}")
    child = subprocess.Popen(command)
    stopping = []

    def on_signal(signum, frame) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    passed_on = False
    while child.poll() is None:
        if stopping and not passed_on:
            passed_on = True
            if to == "child-as-usr1":
                log.warning("%s received: passing SIGUSR1 to %s", signal.Signals(stopping[0]).name, command[0])
                child.send_signal(signal.SIGUSR1)
            else:
                trainers = trainer_descendants(child.pid)
                log.warning("%s received: passing it to %d trainer process(es) %s", signal.Signals(stopping[0]).name,
                            len(trainers), trainers)
                _signal_all(trainers, signal.SIGTERM)
                _wait_gone(trainers, poll_seconds)
                child.send_signal(signal.SIGTERM)
        time.sleep(poll_seconds)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode  # killed by signal N: 128 + N


def trainer_descendants(root: int) -> list[int]:
    """Pids of the `python -m job` processes among the descendants of `root` (read from /proc)."""
    parents, argv = {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = stat_fields(proc.name)
            argv[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        parents[int(proc.name)] = int(stat[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if _is_trainer(argv.get(pid, [])):
            found.append(pid)
    return sorted(found)


def _is_trainer(argv: list[bytes]) -> bool:
    words = [w.decode(errors="replace") for w in argv]
    return any(words[i:i + 2] == _TRAINER_ARGV and "relay" not in words[i + 2:i + 3] for i in range(len(words)))


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], poll_seconds: float) -> None:
    """Until every pid has exited; the pod's grace period bounds this (then the kubelet kills everything)."""
    while any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in pids):
        time.sleep(poll_seconds)


def _is_zombie(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] == "Z"
    except OSError:
        return True

