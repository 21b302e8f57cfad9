"""`python -m job train`: build the run, restore or start it, run the loop with the default hooks, and end it: a
preempted run commits its checkpoint and exits 75; any other ends with the export and the final evaluation."""
from __future__ import annotations

import contextlib
import logging

from job.builder import RunParts, build_run
from job.config import Config
from job.data import Splits
from job.errors import EXIT_OK, EXIT_PREEMPTED
from job.evaluate import compute_metrics, evaluate_and_store, predict_logits
from job.export import export_model
from job.hooks import Hook, default_hooks
from job.loop import PREEMPTED, Loop
from job.runlog import capture_early
from job.stopping import StopRequest

log = logging.getLogger("job")


def train(cfg: Config, extra_hooks: list[Hook] = (), splits: Splits | None = None) -> int:
    """Train (or resume) the run `cfg` describes; `extra_hooks` run after the default ones; `splits`: the data, if
    loaded already (job/preflight.py)."""
    capture_early()  # the lines logged before the run's log file opens (job/runlog.py)
    stop = StopRequest()
    stop.install_signal_handlers()
    parts = build_run(cfg, splits=splits)
    restored = parts.restore_or_initialize()
    _log_start(parts, resumed=restored is not None)
    loop = Loop(parts, default_hooks(parts) + list(extra_hooks), stop)
    try:
        outcome = loop.run(restored=restored is not None)
        backend, run = parts.backend, parts.run

        if outcome == PREEMPTED:
            loop.end(outcome)
            run.close(cfg.checkpoint.upload_timeout_seconds)  # waits for the commit
            # Nobody leaves before the chief has committed: mpirun kills the remaining ranks when the first one exits.
            backend.barrier()
            log.warning("checkpoint at step %d committed; run the same command again to resume", loop.step)
            backend.shutdown()
            return EXIT_PREEMPTED

        backend.barrier()
        evaluation, logits = _evaluate_and_export(parts, loop.step) if backend.is_chief else (None, None)
        loop.end(outcome, evaluation)
        if backend.is_chief:
            _report(parts, loop.step, logits)  # after the records' end: the report shows this start's outcome
        run.close(cfg.checkpoint.upload_timeout_seconds)
        backend.shutdown()
        return EXIT_OK
    except BaseException as error:
        # The status record marks the run failed with its reason, the run's log gets it, and both go up before the CLI
        # reports it (bounded: a crash must not wait for a dead bucket).
        loop.fail(error)
        if not run_closed(parts.run, min(60.0, cfg.checkpoint.upload_timeout_seconds)):
            log.warning("could not store everything in %s after the error", parts.run.url)
        raise


def _evaluate_and_export(parts: RunParts, step: int) -> tuple[dict, dict]:
    """The chief's end of a run: the test set predicted once per weight set and TTA mode, the evaluation of the
    weights a run exports stored (the averaged ones when it keeps them, with the trained ones' figures beside), and
    the exports (the model card has the metrics). Returns the evaluation and the exported weights' test logits
    ("headline": with train.tta, "plain": without), which the report uses."""
    cfg, run, model, splits = parts.cfg, parts.run, parts.model, parts.splits
    extra = {}
    if parts.ema is not None:
        trained = compute_metrics(splits.y_test, predict_logits(model, splits.x_test, cfg.train.eval_batch_size),
                                  splits.class_names)
        extra = {"weights": "averaged", "trained": {k: trained[k] for k in ("loss", "top1", "top5")}}
    with _exported_weights(parts):
        # once per TTA mode: without TTA, and with train.tta (the headline) when it is on
        plain = predict_logits(model, splits.x_test, cfg.train.eval_batch_size)
        tta = cfg.train.tta
        headline = plain if tta == "off" else predict_logits(model, splits.x_test, cfg.train.eval_batch_size, tta)
        evaluation = evaluate_and_store(run, cfg, model, splits, step=step, logits=headline, tta=tta,
                                        plain_logits=plain, extra=extra,
                                        writer=parts.writers.eval if parts.writers else None)
        export_model(run, cfg, model, splits.class_names, evaluation, splits)  # the model alone: TTA-free
    return evaluation, {"headline": headline, "plain": plain}


def _exported_weights(parts: RunParts):
    """The weights a run evaluates last, exports and reports on: the averaged ones when it keeps them (job/ema.py)."""
    return parts.ema.swapped() if parts.ema is not None else contextlib.nullcontext()


def _report(parts: RunParts, step: int, logits) -> None:
    """eval/report.html from the final evaluation's predictions. A report that cannot be made is logged and does not
    fail the run: everything else is stored by then, and `python -m job report` makes it again."""
    from job.report.build import write_report  # matplotlib: imported when needed, not at every start

    try:
        with _exported_weights(parts):
            write_report(parts.run, parts.cfg, parts.model, parts.splits, step=step, weights="final",
                         logits=logits["headline"], tta=parts.cfg.train.tta, plain_logits=logits["plain"])
    except Exception:  # noqa: BLE001
        log.exception("could not make the report; make it again with `python -m job report --run-dir %s`",
                      parts.run.url)


def run_closed(run, timeout: float) -> bool:
    """Close the run dir after an error; False if something could not be stored (the error being reported wins)."""
    try:
        run.close(timeout)
        return True
    except Exception:  # noqa: BLE001
        return False


def _log_start(parts: RunParts, resumed: bool) -> None:
    cfg, step, steps_per_epoch = parts.cfg, parts.step, parts.steps_per_epoch
    if resumed:
        log.info("resuming from step %d (epoch %d, batch %d of %d) in %s; %s (%s backend)", step,
                 step // steps_per_epoch + 1, step % steps_per_epoch, steps_per_epoch, parts.run.url,
                 parts.batches.describe(), parts.backend.name)
    else:
        log.info("starting %s on %s: %d epochs of %d steps, %s (%s backend), run dir %s",
                 cfg.model.name, cfg.data.name, parts.total_epochs, steps_per_epoch, parts.batches.describe(),
                 parts.backend.name, parts.run.url)
