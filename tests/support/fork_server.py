"""The line protocol of the tests' fork servers (tests/support/trainer_fork_server.py,
tests/support/ckpt_kill_writer.py): a process that has imported TensorFlow once forks one child per "start" and SIGKILLs
it on "kill". Standard library only."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def kill(pid: int) -> str:
    """SIGKILL our child `pid` and reap it: "killed", or "exited CODE" if it had ended by itself first."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return f"exited {os.waitstatus_to_exitcode(status)}"
    os.kill(pid, signal.SIGKILL)  # our own unreaped child: its pid cannot have been reused
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    return f"exited {os.waitstatus_to_exitcode(status)}"  # it ended just before the signal


def serve(start: Callable[..., int], what: str) -> None:
    """Print "ready", then answer each stdin line: "start ARGS..." -> start(*ARGS) -> "started PID"; "kill" ->
    kill(PID). One child at a time; EOF ends the server (and kills a child still running)."""
    print("ready", flush=True)
    child = None
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "start":
            assert child is None, f"one {what} at a time"
            child = start(*rest)
            print(f"started {child}", flush=True)
        elif command == "kill":
            print(kill(child), flush=True)
            child = None
    if child is not None:
        kill(child)
