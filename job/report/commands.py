"""`python -m job report` and `python -m job compare`: their arguments are checked here, before TensorFlow is
imported (seconds), so a bad one is refused at once, in one line, with nothing written."""
from __future__ import annotations

from job.layout import REPORT_FILE
from job.report.rundata import load_run
from job.weights import Selection, check


def report(selection: Selection, tta: str | None = None) -> int:
    check(selection)  # refuses what is not a run, or has no such checkpoint, before anything is built or written
    data = load_run(selection.run_dir)
    from job.report.build import report_run

    path = report_run(selection, tta)
    print(f"{data.url.rstrip('/')}/{REPORT_FILE}" if data.url.startswith("gs://") else path, flush=True)
    return 0


def compare(run_dirs: list[str], out: str) -> int:
    from job.report.compare import compare_runs

    compare_runs(run_dirs, out)
    return 0
