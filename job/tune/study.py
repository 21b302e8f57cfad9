"""The Optuna study a tuning's workers share: its storage, sampler and pruner, and the few rules Optuna leaves to us.

- Storage: an RDB storage (SQLite in the study dir by default, PostgreSQL on a cluster) with heartbeats, so a trial
  whose worker died is marked failed after `grace_seconds` and Optuna's RetryHeartbeatStaleTrialCallback queues a
  copy with the same values; the copy trains in the dead trial's run dir and resumes from its checkpoints.
- Grid: the worker that creates the study queues every grid point once (creation is atomic in the database), and
  workers only ever take queued trials (taking one is atomic too), so K racing workers train each point exactly once.
- The count: a study is done when `trials` trials are finished (complete, pruned, or failed for a reason of their
  own, such as a diverged loss). A trial that died with its worker does not count (its retry does), nor does a
  surplus trial: one asked for by a worker that lost the race for the last slot, closed at once without training.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from job.errors import UserError, first_line
from job.tune.space import Space

log = logging.getLogger("job")
# Heartbeats, retries and the matplotlib plots are "experimental" in Optuna since v2/v3; the pin keeps them as tested.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says what each trial does

STORAGE_ENV = "JOB_TUNE_STORAGE"
SQLITE_FILE = "study.db"
ERROR_ATTR = "error"  # a trial that failed for a reason of its own (it counts as finished)
SURPLUS_ATTR = "surplus"  # a trial closed unrun: the study already had its trials
GRID_READY_ATTR = "grid_queued"
RUN_ATTR = "run_dir"
_SCHEMA_LOCK_KEY = 7312001  # any constant: the advisory lock's name among this database's users


@dataclass
class Study:
    study: optuna.Study
    storage: RDBStorage
    space: Space
    study_id: int

    # --- counting ------------------------------------------------------------------------------------------------
    def trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def finished(self) -> int:
        return sum(1 for t in self.trials() if counts_as_finished(t))

    def open_slots(self) -> int:
        """Trials still to be started: the asked number minus every trial finished, running or queued."""
        return self.space.trials - sum(1 for t in self.trials() if _takes_a_slot(t))

    def done(self) -> bool:
        return self.finished() >= self.space.trials

    # --- taking a trial ------------------------------------------------------------------------------------------
    def take_queued(self) -> optuna.Trial | None:
        """A queued trial (a grid point or a retry), now RUNNING and ours; None if none is left."""
        for trial in self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if self.storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(self.study, trial._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def take_new(self) -> optuna.Trial | None:
        """A new trial from the sampler, unless the study has all its trials (grid: only queued points are run)."""
        if self.space.sampler == "grid" or self.open_slots() <= 0:
            return None
        trial = self.study.ask()
        ahead = [t for t in self.trials() if t.number <= trial.number and _takes_a_slot(t)]
        if len(ahead) > self.space.trials:  # another worker took the last slot between the count and the ask
            trial.set_user_attr(SURPLUS_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        return trial

    def fail_stale(self) -> None:
        """Mark trials whose worker stopped beating as failed; Optuna's callback queues their retries."""
        optuna.storages.fail_stale_trials(self.study)


def counts_as_finished(trial: optuna.trial.FrozenTrial) -> bool:
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs


def is_retry(trial: optuna.trial.FrozenTrial) -> bool:
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) is not None


def retries(trial: optuna.trial.FrozenTrial) -> int:
    """How many dead trials came before this one in its chain of retries."""
    return len(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def origin_number(trial: optuna.trial.FrozenTrial) -> int:
    """The number of the first trial of a chain of retries: its run dir is the chain's."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[0] if history else trial.number


def _takes_a_slot(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, running or queued. A dead trial does not (its queued retry does)."""
    return counts_as_finished(trial) or trial.state in (TrialState.RUNNING, TrialState.WAITING)


def storage_url(explicit: str | None, study_dir: str) -> str:
    """--storage, else $JOB_TUNE_STORAGE, else SQLite in a local study dir (a gs:// study dir needs a database)."""
    import os

    url = explicit or os.environ.get(STORAGE_ENV, "")
    if url:
        return url
    if study_dir.startswith("gs://"):
        raise UserError(f"a study in {study_dir} needs a shared database: give --storage postgresql+psycopg://... "
                        f"or set {STORAGE_ENV} (SQLite works only with a local study dir)")
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(study_dir).resolve() / SQLITE_FILE}"


def open_study(space: Space, url: str, create: bool = True) -> Study:
    """The study `space.study` in the database at `url`; created (and its grid queued) by the first worker."""
    storage = _storage(space, url)
    sampler = _sampler(space)
    pruner = _pruner(space)
    created = False
    if create:
        try:
            optuna.create_study(study_name=space.study, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    try:
        study = optuna.load_study(study_name=space.study, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise UserError(f"no study {space.study!r} in {redact(url)}; run `python -m job tune` to start it") from None
    result = Study(study=study, storage=storage, space=space, study_id=storage.get_study_id_from_name(space.study))
    if created:
        log.info("created study %s in %s", space.study, redact(url))
        if space.sampler == "grid":
            for point in space.grid()[:space.trials]:
                study.enqueue_trial(point)
            study.set_user_attr(GRID_READY_ATTR, True)
    elif space.sampler == "grid":
        _wait_for_grid(result)
    return result


def _wait_for_grid(study: Study, timeout: float = 300.0) -> None:
    """The creating worker queues the grid right after creating the study; wait for it (seconds at most)."""
    deadline = time.monotonic() + timeout
    while not study.study.user_attrs.get(GRID_READY_ATTR):
        if time.monotonic() > deadline:
            raise UserError(f"study {study.space.study}'s grid was never queued (its creator died right after "
                            "creating it?); delete the study and start again")
        time.sleep(1.0)


def _storage(space: Space, url: str) -> RDBStorage:
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with _schema_lock(url):
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=max(1, round(space.heartbeat_seconds)),
                              grace_period=max(2, round(space.grace_seconds)),
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=space.max_retries, inherit_intermediate_values=True))
    except Exception as e:  # noqa: BLE001 - SQLAlchemy and the drivers raise many types for a bad URL or server
        raise UserError(f"cannot open the study database {redact(url)} ({first_line(e)}); check the URL, that the "
                        "server is up and the user may connect") from None


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """PostgreSQL: one process at a time creates (or checks) Optuna's tables. K pods starting at once on an empty
    database otherwise collide in CREATE TABLE ("duplicate key value violates unique constraint
    pg_type_typname_nsp_index", optuna/optuna#1092): 3 of 4 failed every time here, none with the lock."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_KEY})"))
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_KEY})"))
    finally:
        engine.dispose()


def _sampler(space: Space):
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=min(10, max(2, space.trials // 3)))
    return optuna.samplers.RandomSampler(seed=space.seed)  # grid: only queued points are run, the sampler is idle


def _pruner(space: Space):
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def redact(url: str) -> str:
    """A database URL without its password, for logs and errors."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]
