"""Benchmark worker processes: the parent sends one JSON command per line on stdin, the worker answers one JSON line.

Commands: {"cmd": "setup", "kind": ..., "params": {...}} builds the sides (e.g. the training loop) and warms nothing
up; {"cmd": "trial", "side": name} runs one timed trial of a side; {"cmd": "finish"} runs the sides' finish hook;
{"cmd": "exit"} answers with the process's peak RSS and exits. The worker points its stdout at stderr at start, so
whatever TensorFlow or Keras print cannot corrupt the protocol, which runs on a private copy of the original stdout.
"""
from __future__ import annotations

import importlib
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PREFIX = "@@bench "

# kind -> "module:function"; the function takes the setup params and returns Sides
KINDS = {
    "loop": "bench.throughput:setup_loop",
    "fit": "bench.throughput:setup_fit",
    "pipeline": "bench.pipeline:setup_pipeline",
    "folder": "bench.folder_data:setup_folder",
    "checkpoint": "bench.checkpoints:setup_checkpoint",
    "report": "bench.report_page:setup_report_page",
    "serving": "bench.serving:setup_serving",
    "litert": "bench.litert:setup_litert",
    "recipe": "bench.recipe:setup_recipe",
}


@dataclass
class Sides:
    """What a worker can run: named timed trials (each returns a dict of figures), facts about the setup, and a
    hook run once after the last trial."""

    trials: dict[str, Callable[[], dict]]
    info: dict = field(default_factory=dict)
    finish: Callable[[], dict] | None = None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


# ---------------------------------------------------------------------------------------------------- the child


def serve() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(**message) -> None:
        protocol.write(_PREFIX + json.dumps(message) + "\n")

    sides: Sides | None = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "setup":
                module, function = KINDS[command["kind"]].split(":")
                sides = getattr(importlib.import_module(module), function)(**command["params"])
                answer(ok=True, sides=sorted(sides.trials), info=sides.info)
            elif command["cmd"] == "trial":
                answer(ok=True, result=sides.trials[command["side"]]())
            elif command["cmd"] == "finish":
                answer(ok=True, result=sides.finish() if sides and sides.finish else {})
            elif command["cmd"] == "exit":
                answer(ok=True, peak_rss_mb=peak_rss_mb())
                return
        except Exception:  # noqa: BLE001 - reported to the parent, which shows it with the worker's log
            answer(ok=False, error=traceback.format_exc())


# ---------------------------------------------------------------------------------------------------- the parent


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process seen from the parent. Commands can be sent to several workers before collecting the answers
    (used for the untimed warm-up, so sides trace their functions at the same time)."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str] | None = None, timeout: float = 900.0):
        self.name = name
        self.timeout = timeout
        self.log_path = log_dir / f"{name.replace(' ', '_').replace('/', '_')}.log"
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH", "")]))
        self._log = open(self.log_path, "w")
        self._proc = subprocess.Popen([sys.executable, "-m", "bench.worker"], cwd=ROOT, env=child_env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.peak_rss_mb: float | None = None
        self.info: dict = {}  # what the setup reported
        self.sides: list[str] = []
        self._pending = 0  # commands sent and not answered yet

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.startswith(_PREFIX):
                self._answers.put(json.loads(line[len(_PREFIX):]))
        self._answers.put(None)  # the worker's stdout closed: it exited

    def send(self, cmd: str, **fields) -> None:
        try:
            self._proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self._proc.stdin.flush()
            self._pending += 1
        except BrokenPipeError:
            raise WorkerError(f"worker {self.name} has exited\n{self.log_tail()}") from None

    def receive(self) -> dict:
        try:
            message = self._answers.get(timeout=self.timeout)
        except queue.Empty:
            self.kill(now=True)
            raise WorkerError(
                f"worker {self.name} did not answer within {self.timeout:.0f} s\n{self.log_tail()}") from None
        if message is None:
            raise WorkerError(f"worker {self.name} exited unexpectedly\n{self.log_tail()}")
        self._pending -= 1
        if not message["ok"]:
            raise WorkerError(f"worker {self.name} failed:\n{message['error']}")
        return message

    def call(self, cmd: str, **fields) -> dict:
        self.send(cmd, **fields)
        return self.receive()

    def trial(self, side: str) -> dict:
        return self.call("trial", side=side)["result"]

    def finish(self) -> dict:
        return self.call("finish")["result"]

    def close(self) -> float | None:
        """Ask the worker to exit; returns its peak RSS in MB (None if it had died or was still busy)."""
        if self._pending:  # after an error elsewhere: do not wait for a trial nobody needs any more
            self.kill(now=True)
        if self._proc.poll() is None:
            try:
                self.peak_rss_mb = self.call("exit")["peak_rss_mb"]
            except WorkerError:
                pass
        self.kill()
        return self.peak_rss_mb

    def kill(self, now: bool = False) -> None:
        """End the process: it exits by itself once its stdin closes; a hung one is killed."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=0.1 if now else 30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if not self._log.closed:
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  | {line}" for line in text[-lines:])


if __name__ == "__main__":
    serve()
