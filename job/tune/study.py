"""The Optuna study a tuning's workers share: its storage, sampler and pruner, and the few rules Optuna leaves to us.

- Storage: an RDB storage (SQLite in the study dir by default, PostgreSQL on a cluster) with heartbeats. A trial whose
  worker stopped beating for `grace_seconds` is marked failed by exactly one worker (a compare-and-set on its state,
  job/tune/claims.py), which queues one copy with the same values (Optuna's RetryHeartbeatStaleTrialCallback); the
  copy trains in the dead trial's run dir and resumes from its checkpoints.
- Taking a queued trial (a grid point or a retry) is the same compare-and-set, so no two workers train one trial.
- Grid: the worker that creates the study queues every grid point once (creation is atomic in the database), and
  workers only ever take queued trials, so K racing workers train each point exactly once.
- New trials (random, tpe): each is drawn by a sampler seeded for it and never repeats a stored trial's values
  (job/tune/draws.py), across any number of workers and restarts.
- The count: a study is done when `trials` trials are finished (complete or pruned). A trial that failed for a reason
  of its own (a diverged loss) is not finished: it is shown as failed and not retried, and the sampler draws another
  in its place, up to `trials` failures; a grid's failed point stays failed. A trial that died with its worker does
  not count either (its retry does), nor does a surplus trial: one asked for by a worker that lost the race for the
  last slot, closed at once without training.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from job.errors import UserError, first_line
from job.tune.claims import claim
from job.tune.draws import draw_distinct, point_of, sampler_seed
from job.tune.registry import PRUNERS, SAMPLERS
from job.tune.space import Space

log = logging.getLogger("job")
# Heartbeats, retries and the matplotlib plots are "experimental" in Optuna since v2/v3; the pin keeps them as tested.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says what each trial does

STORAGE_ENV = "JOB_TUNE_STORAGE"
SQLITE_FILE = "study.db"
ERROR_ATTR = "error"  # a trial that failed for a reason of its own (not finished, not retried)
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
    created: bool = False  # this process created the study
    # Called with the numbers of the stale trials a worker found, before it claims them (tests/support/hooked_tune.py
    # holds two workers there, so both have seen the same dead trial before either claims it).
    before_claiming_stale: Callable[[list[int]], None] | None = None

    # --- counting ------------------------------------------------------------------------------------------------
    def trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def finished(self) -> int:
        return sum(1 for t in self.trials() if counts_as_finished(t))

    def failed(self) -> int:
        """Trials that ended without an objective and will not be retried."""
        return sum(1 for t in self.trials() if is_failed(t, self.space.max_retries))

    def open_slots(self) -> int:
        """Trials still to be started: the asked number minus every trial finished, running or queued."""
        return self.space.trials - sum(1 for t in self.trials() if _takes_a_slot(t))

    def done(self) -> bool:
        """Nothing is left to train: `trials` finished; or a grid whose every point ended; or `trials` failures (a
        base config whose every trial fails must not draw replacements forever)."""
        finished, failed = self.finished(), self.failed()
        if self.space.queues_grid:
            return finished + failed >= self.space.trials
        return finished >= self.space.trials or failed >= self.space.trials

    def progress(self) -> str:
        """"5 of 6 trials finished, 1 failed": what the leaderboard and the workers' last lines say."""
        failed = self.failed()
        return (f"{self.finished()} of {self.space.trials} trials finished" + (f", {failed} failed" if failed else ""))

    # --- taking a trial ------------------------------------------------------------------------------------------
    def take_queued(self) -> optuna.Trial | None:
        """A queued trial (a grid point or a retry), now RUNNING and ours; None if none is left."""
        for trial in self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)):
            if claim(self.storage, trial._trial_id, TrialState.WAITING, TrialState.RUNNING):
                return optuna.Trial(self.study, trial._trial_id)
        return None

    def take_new(self) -> optuna.Trial | None:
        """A new trial with values no stored trial has, unless the study has all its trials (grid: only queued
        points are run)."""
        if self.space.queues_grid or self.open_slots() <= 0:
            return None
        trial_id = self.storage.create_new_trial(self.study_id)
        number = self.storage.get_trial_number_from_id(trial_id)
        ahead = [t for t in self.trials() if t.number <= number and _takes_a_slot(t)]
        if len(ahead) > self.space.trials:  # another worker took the last slot between the count and the create
            self.storage.set_trial_user_attr(trial_id, SURPLUS_ATTR, True)
            self.study.tell(number, state=TrialState.FAIL)
            return None
        # This trial's own view of the study: the same storage and pruner, a sampler seeded for this trial.
        view = optuna.Study(study_name=self.space.study, storage=self.study._storage,
                            sampler=_sampler(self.space, sampler_seed(self.space.seed, trial_id)),
                            pruner=self.study.pruner)
        draw_distinct(view, self.space, trial_id, lambda: self._points(but=trial_id))
        return optuna.Trial(view, trial_id)

    def _points(self, but: int) -> list[dict]:
        return [point_of(t) for t in self.storage.get_all_trials(self.study_id, deepcopy=False)
                if t._trial_id != but and not t.user_attrs.get(SURPLUS_ATTR)]

    def fail_stale(self) -> None:
        """Mark trials whose worker stopped beating as failed, each by exactly one worker, which queues its retry."""
        stale = self.storage._get_stale_trial_ids(self.study_id)
        if not stale:
            return
        if self.before_claiming_stale is not None:
            self.before_claiming_stale([self.storage.get_trial_number_from_id(i) for i in stale])
        retry = self.storage.get_heartbeat_stale_trial_callback()
        for trial_id in stale:
            if claim(self.storage, trial_id, TrialState.RUNNING, TrialState.FAIL) and retry is not None:
                retry(self.study, copy.deepcopy(self.storage.get_trial(trial_id)))


def counts_as_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete or pruned: a trial with an objective."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def is_failed(trial: optuna.trial.FrozenTrial, max_retries: int) -> bool:
    """Failed for a reason of its own, or died with its worker once more than `max_retries` allows (no retry)."""
    if trial.state != TrialState.FAIL or trial.user_attrs.get(SURPLUS_ATTR):
        return False
    return ERROR_ATTR in trial.user_attrs or retries(trial) >= max_retries


def is_dead(trial: optuna.trial.FrozenTrial) -> bool:
    """Died with its worker (marked failed by another worker; its retry is queued)."""
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(SURPLUS_ATTR) and ERROR_ATTR not in \
        trial.user_attrs


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
    sampler = _sampler(space, space.seed)  # the study's own; each new trial gets one seeded for it (take_new)
    pruner = PRUNERS[space.pruner].make(space)
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
    result = Study(study=study, storage=storage, space=space, study_id=storage.get_study_id_from_name(space.study),
                   created=created)
    if created:
        log.info("created study %s in %s", space.study, redact(url))
        if space.queues_grid:
            for point in space.grid()[:space.trials]:
                study.enqueue_trial(point)
            study.set_user_attr(GRID_READY_ATTR, True)
    elif space.queues_grid:
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


def _sampler(space: Space, seed: int):
    return SAMPLERS[space.sampler].make(space, seed)


def redact(url: str) -> str:
    """A database URL without its password, for logs and errors."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]
