"""`python -m job report` and `python -m job compare`: their arguments are checked here, before TensorFlow is
imported (seconds), so a bad one is refused at once, in one line, with nothing written."""
from __future__ import annotations

from job.errors import UserError
from job.report.rundata import REPORT_FILE, RunData, load_run

CHECKPOINTS = ("latest", "best")


def report(run_dir: str, checkpoint: str = "latest") -> int:
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
    data = check_run(run_dir, checkpoint)
    from job.report.build import report_run

    path = report_run(data.url, checkpoint)
    print(f"{data.url.rstrip('/')}/{REPORT_FILE}" if data.url.startswith("gs://") else path, flush=True)
    return 0


def check_run(run_dir: str, checkpoint: str) -> RunData:
    """`report` and `evaluate`: refuse what is not a run (creating nothing) and `best` of a run without a validation
    split, in one line, before TensorFlow is imported or anything is built or written."""
    data = load_run(run_dir)
    if checkpoint == "best" and not data.cfg.data.validation_split:
        raise UserError(f"{data.url} has no best checkpoint: it has no validation split (data.validation_split=0); "
                        f"use --checkpoint latest")
    return data


def compare(run_dirs: list[str], out: str) -> int:
    from job.report.compare import compare_runs

    compare_runs(run_dirs, out)
    return 0
