"""Taking a trial atomically: one conditional UPDATE (a compare-and-set) on Optuna's trials table.

Optuna's own `set_trial_state_values` reads the trial's state and then writes it. On PostgreSQL the read locks the row
(SELECT ... FOR UPDATE), but SQLite has no row locks and pysqlite begins the transaction only at the write, so two
workers can both read RUNNING, both mark a dead trial failed and both queue a retry of it (seen: "trial 2 (retry of
trial 0)" and "trial 3 (retry of trial 0)" in the same second); the same holds for taking a queued trial.
`UPDATE trials SET state = NEW WHERE trial_id = ? AND state = OLD` is atomic on both databases: exactly one of any
number of racing workers changes the row, and it is the one told so.
"""
from __future__ import annotations

import datetime

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models  # the schema of the pinned Optuna (requirements.txt)
from optuna.trial import TrialState


def claim(storage: RDBStorage, trial_id: int, expected: TrialState, new: TrialState) -> bool:
    """Move trial `trial_id` from `expected` to `new`; True for the one caller that did it, False for the others."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
    trial = models.TrialModel
    values: dict = {trial.state: new}
    if new == TrialState.RUNNING:
        values[trial._datetime_start_utc] = now
    if new.is_finished():
        values[trial._datetime_complete_utc] = now
    session = storage.scoped_session()
    try:
        result = session.execute(sqlalchemy.update(trial).where(trial.trial_id == trial_id, trial.state == expected)
                                 .values(values).execution_options(synchronize_session=False))
        session.commit()
        return result.rowcount == 1
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
