"""The chief's report at the end of a run: `eval/report.html` (job/report/build.py) from the final weights, right
after the final evaluation. Not on a preempted run (it has no final evaluation; the next start makes the report).

A report that cannot be made is logged as an error and does not fail the run: the checkpoint, the export and the
evaluation are stored by then, and `python -m job report` makes it again."""
from __future__ import annotations

import logging

from job.hooks.base import Hook

log = logging.getLogger("job")


class ReportHook(Hook):
    def on_train_end(self, loop, outcome, evaluation):
        if outcome == "preempted" or evaluation is None:
            return
        from job.report.build import write_report

        parts = loop.parts
        try:
            write_report(parts.run, parts.cfg, parts.model, parts.splits, step=loop.step, weights="final")
        except Exception:  # noqa: BLE001 - the run's results are stored; the report can be made again
            log.exception("could not make the report; make it again with `python -m job report --run-dir %s`",
                          parts.run.url)
