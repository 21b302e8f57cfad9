"""Runs `python -m job train ARGS...` many times without paying TensorFlow's import each time: this process imports the
trainer once, then forks one trainer per request (before any TF op has run, so each child starts TF's runtime itself)
and kills it with SIGKILL when told to. The children run the real CLI entry point, `job.cli.main`.

Started as `python trainer_fork_server.py train ARGS...`. Protocol on stdin/stdout, one line each:
    test -> "start WORK_DIR LOG_PATH [NAME=VALUE ...]"
                                        fork a trainer with run.work_dir=WORK_DIR, its stdout+stderr to LOG_PATH and
                                        the environment variables given set (e.g. its own STORAGE_EMULATOR_HOST)
    this -> "started PID"
    test -> "kill"                      SIGKILL the running trainer (if it is still running) and reap it
    this -> "killed" or "exited CODE"   (CODE: the trainer's exit code; it ended by itself before the kill)
"ready" is printed once at start; EOF on stdin ends the process.
"""
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import job.cli  # noqa: E402
import job.train  # noqa: E402,F401  (the heavy imports: TensorFlow, Keras, the models)


def start(args: list[str], work_dir: str, log_path: str, *env: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.update(item.split("=", 1) for item in env)
        code = job.cli.main([*args, f"run.work_dir={work_dir}"])
    except BaseException:  # noqa: BLE001 - the child reports any failure, then exits
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def kill(pid: int) -> str:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return f"exited {os.waitstatus_to_exitcode(status)}"
    os.kill(pid, signal.SIGKILL)  # our own unreaped child: its pid cannot have been reused
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    return f"exited {os.waitstatus_to_exitcode(status)}"  # it ended just before the signal


def main() -> None:
    args = sys.argv[1:]
    print("ready", flush=True)
    child = None
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "start":
            assert child is None, "one trainer at a time"
            child = start(args, *rest)
            print(f"started {child}", flush=True)
        elif command == "kill":
            print(kill(child), flush=True)
            child = None
    if child is not None:
        kill(child)


if __name__ == "__main__":
    main()
