"""Runs `python -m job train ARGS...` many times without paying TensorFlow's import each time: this process imports the
trainer once, then forks one trainer per request (before any TF op has run, so each child starts TF's runtime itself)
and kills it with SIGKILL when told to. The children run the real CLI entry point, `job.cli.main`.

Started as `python -m tests.support.trainer_fork_server train ARGS...` from the repository. Protocol on stdin/stdout,
one line each:
    test -> "start WORK_DIR LOG_PATH [NAME=VALUE ...]"
                                        fork a trainer with run.work_dir=WORK_DIR, its stdout+stderr to LOG_PATH and
                                        the environment variables given set (e.g. its own STORAGE_EMULATOR_HOST)
    this -> "started PID"
    test -> "kill"                      SIGKILL the running trainer (if it is still running) and reap it
    this -> "killed" or "exited CODE"   (CODE: the trainer's exit code; it ended by itself before the kill)
"ready" is printed once at start; EOF on stdin ends the process.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import job.cli  # noqa: E402
import job.train  # noqa: E402,F401  (the heavy imports: TensorFlow, Keras, the models)
from tests.support.fork_server import serve  # noqa: E402
from tests.support.trainer_runs import without_litert  # noqa: E402


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


def main() -> None:
    serve(lambda *rest: start(without_litert(sys.argv[1:]), *rest), "trainer")


if __name__ == "__main__":
    main()
