"""One trial worker: take a trial, train it as an ordinary run in `<study dir>/trials/<n>/`, tell the study, repeat
until the study has its trials.

A trial is `python -m job train` in this process (`job.train.train` with one more hook) with the trial's values as
overrides. The hook reports validation top-1 after every epoch; when the pruner says so it asks the run to finish,
which stops every worker of the run after the same step and still evaluates and reports it. While a trial trains,
a thread beats its heartbeat in the database; if this process dies the beats stop, another worker marks the trial
failed after the grace period, and its retry resumes from the run dir's checkpoints (the run dir is named by the
first trial of the chain, so every retry finds it).
"""
from __future__ import annotations

import gc
import logging
import threading
import time

import optuna
from optuna.trial import TrialState

from job.errors import EXIT_OK, EXIT_PREEMPTED, UserError, first_line
from job.hooks import Hook, Stop
from job.metrics import best_metric
from job.tune.database import DatabaseUnavailableError, patiently
from job.tune.hparams import write_experiment, write_trial
from job.tune.study import ERROR_ATTR, RUN_ATTR, Study, origin_number

log = logging.getLogger("job")

WAIT_SECONDS = 2.0  # between looks at the study while other workers finish the last trials
EPOCHS_ATTR = "epochs"
RESUMED_ATTR = "resumed_from_step"


class TrialReport(Hook):
    """Reports each epoch's validation top-1 to the trial and finishes the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: int | None = None
        self.best: float | None = None
        self.epochs = 0
        self.resumed_from = 0

    def on_train_start(self, state):
        self.resumed_from = state.step

    def on_epoch_end(self, state):
        epoch, validation, metric = state.epoch, state.validation, best_metric(state.run.cfg)
        self.epochs = epoch
        if not validation:
            return None
        patiently(lambda: self.trial.report(float(validation[metric]), step=epoch), "reporting an epoch")
        last = epoch + 1 >= state.run.total_epochs  # nothing left to save: the trial completes
        if (state.run.is_chief and self.pruned_at is None and not last
                and patiently(self.trial.should_prune, "asking the pruner")):
            self.pruned_at = epoch
            log.info("trial %d pruned after epoch %d (validation top-1 %.4f is below the median of earlier trials)",
                     self.trial.number, epoch, validation[metric])
            return Stop(f"pruned by the tuner after epoch {epoch}")
        return None

    def on_train_end(self, state):
        self.best = state.best_val_top1  # the loop keeps it (None without a validation split)
        self.epochs = state.step // state.run.steps_per_epoch


class Heartbeat:
    """Records the trial's heartbeat every interval from a thread, for as long as the `with` block runs."""

    def __init__(self, study: Study, trial: optuna.Trial):
        self.storage, self.trial_id = study.storage, trial._trial_id
        self.interval = study.storage.get_heartbeat_interval() or 30
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat {trial.number}", daemon=True)

    def __enter__(self):
        patiently(lambda: self.storage.record_heartbeat(self.trial_id), "recording a heartbeat")
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

    def _beat(self):
        while not self.stopped.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a database blip must not kill the trial; the next beat retries
                log.warning("could not record the heartbeat of trial %s (%s)", self.trial_id, first_line(e))


def run_worker(study: Study, config: str, overrides: list[str], study_dir: str, extra_hooks=()) -> int:
    """Run trials until the study is done. Returns 0, or 75 when SIGTERM stopped a trial (its checkpoint is
    committed; the trial is retried, resuming, by whichever worker runs next)."""
    write_experiment(study.space, study_dir)  # TensorBoard's HParams dashboard: once per study dir
    trained = 0
    while True:
        patiently(study.fail_stale, "looking for dead trials")
        if patiently(study.done, "counting finished trials"):
            log.info("study %s is done: %s; this worker trained %d", study.space.study,
                     patiently(study.progress, "counting finished trials"), trained)
            return EXIT_OK
        trial = patiently(study.take_queued, "taking a queued trial") or patiently(study.take_new, "asking for a trial")
        if trial is None:  # others are training the last trials; one of them may die and need a retry
            time.sleep(WAIT_SECONDS)
            continue
        code = run_trial(study, trial, config, overrides, study_dir, extra_hooks)
        trained += 1
        if code == EXIT_PREEMPTED:
            return code


TRIAL_EXPORTS = "export.litert=false"


def run_trial(study: Study, trial: optuna.Trial, config: str, overrides: list[str], study_dir: str,
              extra_hooks=()) -> int:
    from job import config as configlib
    from job.train import train

    frozen = patiently(lambda: study.storage.get_trial(trial._trial_id), "reading the trial")
    number = origin_number(frozen)
    values = patiently(lambda: {p.key: _suggest(trial, p) for p in study.space.params}, "suggesting values")
    run_dir = f"{study_dir.rstrip('/')}/trials/{number}"
    patiently(lambda: trial.set_user_attr(RUN_ATTR, run_dir), "storing the trial's run dir")
    retry = f" (retry of trial {number})" if number != trial.number else ""
    log.info("trial %d%s: %s in %s", trial.number, retry, _describe(values), run_dir)
    report = TrialReport(trial)
    started = time.time()
    with Heartbeat(study, trial):
        try:
            # a trial is an experiment: no LiteRT exports unless the study's overrides ask for them
            cfg = configlib.load_config(config, [TRIAL_EXPORTS, *overrides, *_as_overrides(values),
                                                 f"run.dir={run_dir}"])
            code = train(cfg, extra_hooks=[report, *extra_hooks])
        except DatabaseUnavailableError:
            raise  # the worker's problem: the trial stays unfinished, to be retried from its checkpoints
        except UserError as e:  # a diverged loss, a bad value: a result of this trial, not of the worker
            log.warning("trial %d failed: %s", trial.number, e)
            trial.set_user_attr(ERROR_ATTR, str(e))
            study.study.tell(trial, state=TrialState.FAIL)
            write_trial(study_dir, run_dir, number, values, None, report.epochs, started)
            return EXIT_OK
        finally:
            _release_tensorflow()
    if code == EXIT_PREEMPTED:
        log.warning("trial %d stopped by SIGTERM with its checkpoint committed; it is retried after the grace period "
                    "(%.0f s) and resumes there", trial.number, study.space.grace_seconds)
        return code
    seconds = round(time.time() - started, 1)
    patiently(lambda: [trial.set_user_attr(EPOCHS_ATTR, report.epochs),
                       trial.set_user_attr(RESUMED_ATTR, report.resumed_from), trial.set_user_attr("seconds", seconds)],
              "storing the trial's figures")
    # skip_if_finished: a repeated tell (its first reply lost with the connection) must not count the trial twice
    write_trial(study_dir, run_dir, number, values, report.best, report.epochs, started)
    if report.pruned_at is not None:
        patiently(lambda: study.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True), "telling the result")
    elif report.best is None:  # no epoch was validated (a run whose epochs were all trained already)
        patiently(lambda: [trial.set_user_attr(ERROR_ATTR, "no validation top-1 was recorded"),
                           study.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)], "telling the result")
        return EXIT_OK
    else:
        patiently(lambda: study.study.tell(trial, report.best, skip_if_finished=True), "telling the result")
    log.info("trial %d %s: best validation top-1 %.4f after %d epochs", trial.number,
             "pruned" if report.pruned_at is not None else "complete", report.best or 0.0, report.epochs)
    return EXIT_OK


def _suggest(trial: optuna.Trial, param):
    if param.choices is not None:
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.is_int:
        return trial.suggest_int(param.key, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(param.key, float(param.low), float(param.high), step=param.step, log=param.log)


def _as_overrides(values: dict) -> list[str]:
    import yaml

    return [f"{key}={yaml.safe_dump(value).strip().removesuffix('...').strip()}" for key, value in values.items()]


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _release_tensorflow() -> None:
    """The next trial builds its model anew: drop this one's graphs and tensors."""
    import keras

    keras.backend.clear_session()
    gc.collect()

