#!/usr/bin/env python3
"""Run `python -m job train` as N cooperating processes on this machine: a rehearsal of a multi-node job.

    python scripts/launch_local.py --backend multiworker [--nproc 2] -- --config digits_resnet20 train.epochs=1
    python scripts/launch_local.py --backend horovod     [--nproc 2] -- --config digits_resnet20 train.epochs=1

multiworker: N trainer processes, each with a TF_CONFIG naming every worker on a free 127.0.0.1 port (what the
  Kubernetes manifest gives each pod). Worker 0, the chief, writes to this terminal (progress bar included); the other
  workers' lines are prefixed with "[worker i]". Ctrl-C or SIGTERM is passed on to every worker once: each finishes
  its step, the chief commits a checkpoint, and all exit 75 (run the same command again to resume). If a worker
  exits with an error, the others are given --grace-seconds to notice (they exit 76 when a collective fails) and are
  then killed. The launcher exits with the code of the first worker that failed, else 0 (or 75).
horovod: `horovodrun --gloo -np N -H localhost:N python -m job train ...` (gloo on loopback, no MPI or ssh needed).
  horovodrun owns the processes then: it prefixes each line with [rank]<stdout>, stops the other ranks 5 s after one
  fails, and exits 1 for any failure.

Both backends write one run directory: only worker/rank 0 writes to it; the others only read a checkpoint to resume.
Standard library only, so the launcher itself does not load TensorFlow next to the workers it starts.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_PREEMPTED = 75  # job/errors.py


def free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out on 127.0.0.1; all held open together so they differ from each other."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _gpu_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, so a killed launcher leaves no training behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _prefix_lines(stream, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(prefix.encode() + line)
        sys.stdout.buffer.flush()


def run_multiworker(nproc: int, job_args: list[str], python: str, grace_seconds: float) -> int:
    ports = free_loopback_ports(nproc)
    gpus = _gpu_count() if "CUDA_VISIBLE_DEVICES" not in os.environ else 0
    command = [python, "-m", "job", "train", *job_args, "distribute.backend=multiworker"]
    print(f"[launch] {nproc} multiworker processes on 127.0.0.1:{','.join(map(str, ports))}: {' '.join(command[1:])}",
          flush=True)
    procs: list[subprocess.Popen] = []
    for index in range(nproc):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, index))
        env.pop("JOB_COMPLETION_INDEX", None)  # TF_CONFIG wins anyway; keep the child's view unambiguous
        if gpus:  # one GPU per process, as on a node per worker; without this every process takes every GPU
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        chief = index == 0
        procs.append(subprocess.Popen(
            command, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=None if chief else subprocess.PIPE, stderr=None if chief else subprocess.STDOUT,
            # Own process group: a Ctrl-C on the terminal reaches only the launcher, which passes it on exactly once
            # (a second SIGINT would make a trainer abandon its final checkpoint).
            process_group=0, preexec_fn=_die_with_parent))
    print(f"[launch] worker pids: {' '.join(f'{i}={p.pid}' for i, p in enumerate(procs))} (worker 0 is the chief)",
          flush=True)
    for index, proc in enumerate(procs[1:], start=1):
        threading.Thread(target=_prefix_lines, args=(proc.stdout, f"[worker {index}] "), daemon=True).start()

    def forward(signum, frame):
        print(f"[launch] {signal.Signals(signum).name}: passing it on to every worker", flush=True)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return _wait(procs, grace_seconds)


def _wait(procs: list[subprocess.Popen], grace_seconds: float) -> int:
    """Wait for every worker; once one has failed, kill those still running after `grace_seconds`."""
    first_failure: tuple[int, int] | None = None  # (worker index, exit code)
    deadline = None
    while any(p.poll() is None for p in procs):
        for index, proc in enumerate(procs):
            code = proc.poll()
            if code not in (None, 0) and first_failure is None:
                first_failure = (index, code)
                deadline = time.monotonic() + grace_seconds
                if code != EXIT_PREEMPTED:
                    print(f"[launch] worker {index} exited with {code}; the others have {grace_seconds:.0f} s to "
                          "stop", flush=True)
        if deadline is not None and time.monotonic() > deadline:
            for index, proc in enumerate(procs):
                if proc.poll() is None:
                    print(f"[launch] worker {index} still running {grace_seconds:.0f} s later: killing it", flush=True)
                    proc.kill()
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    if first_failure is None:
        first_failure = next(((i, c) for i, c in enumerate(codes) if c != 0), None)
    print(f"[launch] exit codes: {' '.join(f'worker {i}={c}' for i, c in enumerate(codes))}", flush=True)
    return first_failure[1] if first_failure else 0


def run_horovod(nproc: int, job_args: list[str], python: str) -> int:
    horovodrun = Path(python).parent / "horovodrun"
    if not horovodrun.exists():
        print(f"[launch] {horovodrun} not found: build Horovod first (bash docker/build-horovod.sh --python {python})",
              file=sys.stderr)
        return 2
    command = [str(horovodrun), "--gloo", "-np", str(nproc), "-H", f"localhost:{nproc}",
               python, "-m", "job", "train", *job_args, "distribute.backend=horovod"]
    print(f"[launch] {' '.join(command)}", flush=True)
    env = dict(os.environ, PATH=f"{horovodrun.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    os.chdir(REPO)
    os.execve(command[0], command, env)  # horovodrun handles signals and exit codes from here on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s --backend {multiworker,horovod} [--nproc N] -- [job train args]")
    parser.add_argument("--backend", choices=("multiworker", "horovod"), required=True)
    parser.add_argument("--nproc", type=int, default=2, help="processes to start (default 2)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the venv with the job installed")
    parser.add_argument("--grace-seconds", type=float, default=360.0,
                        help="multiworker: how long the other workers may take to stop after one failed (default "
                             "360, above the default collective timeout of 300 s)")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="arguments of `python -m job train`, after --")
    args = parser.parse_args(argv)
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    if args.nproc < 1:
        parser.error("--nproc must be at least 1")
    other = [a for a in job_args if a.startswith("distribute.backend=") and a != f"distribute.backend={args.backend}"]
    if other:
        parser.error(f"{other[0]} contradicts --backend {args.backend}; drop it from the job arguments")
    if args.backend == "horovod":
        return run_horovod(args.nproc, job_args, args.python)
    return run_multiworker(args.nproc, job_args, args.python, args.grace_seconds)


if __name__ == "__main__":
    sys.exit(main())
