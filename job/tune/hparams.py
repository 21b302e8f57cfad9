"""The study in TensorBoard's HParams dashboard (`tensorboard --logdir <study dir>`), with TensorBoard's own API:

    <study dir>/events.out.tfevents.tune-study      the experiment (hp.hparams_config): each param's domain and the
                                                    metrics; written by the first worker that finds it missing
    <study dir>/trials/<n>/logs/events.out.tfevents.tune   the trial's values (hp.hparams) and its objective
                                                    (`tune/objective`, its best validation top-1), when it ends

The trial's run dir already holds its validation curve (logs/validation), which the dashboard shows beside the
objective. Each file is written whole to a temporary folder and then stored (local or gs://) under a fixed name, so
writing again (a retry, a second worker) replaces it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from job.layout import TUNE_TRIAL_EVENTS
from job.storage import AlreadyExistsError, open_storage
from job.tune.space import Param, Space

STUDY_EVENTS = "events.out.tfevents.tune-study"
OBJECTIVE_TAG = "tune/objective"


def write_experiment(space: Space, study_dir: str) -> None:
    """The experiment summary at the study dir's root, unless it is there already."""
    storage = open_storage(study_dir)
    if storage.exists(STUDY_EVENTS):
        return
    from tensorboard.plugins.hparams import api as hp

    metrics = [hp.Metric(OBJECTIVE_TAG, display_name="objective (best validation top-1)"),
               hp.Metric("top1", group="validation", display_name="validation top-1 (last epoch)"),
               hp.Metric("loss", group="validation", display_name="validation loss (last epoch)")]
    _store(storage, STUDY_EVENTS, lambda: hp.hparams_config(hparams=[_hparam(p) for p in space.params],
                                                            metrics=metrics), if_absent=True)


def write_trial(study_dir: str, run_dir: str, number: int, values: dict, objective: float | None, step: int,
                started: float) -> None:
    """A trial's values and objective in its run's logs (`run_dir` is inside `study_dir`); no objective: failed."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    def summaries():
        hp.hparams({key: _plain(value) for key, value in values.items()}, trial_id=f"trial {number}",
                   start_time_secs=started)
        if objective is not None:
            tf.summary.scalar(OBJECTIVE_TAG, objective, step=step)

    relative = run_dir.rstrip("/").removeprefix(study_dir.rstrip("/") + "/")
    _store(open_storage(study_dir), f"{relative}/{TUNE_TRIAL_EVENTS}", summaries)


def _store(storage, relpath: str, summaries, if_absent: bool = False) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="job-hparams-") as folder:
        writer = tf.summary.create_file_writer(folder)
        with writer.as_default(step=0):
            summaries()
        writer.close()
        [events] = Path(folder).glob("events.out.tfevents.*")
        try:
            storage.write_bytes(relpath, events.read_bytes(), if_absent=if_absent)
        except AlreadyExistsError:  # another worker wrote it first: the same experiment
            pass


def _hparam(param: Param):
    from tensorboard.plugins.hparams import api as hp

    if param.choices is not None:
        kinds = {type(_plain(c)) for c in param.choices}
        # Discrete needs one type (bool, float or str; ints are floats there); mixed choices get no domain.
        plain = [_plain(c) for c in param.choices]
        if kinds <= {int, float}:
            return hp.HParam(param.key, hp.Discrete([float(c) for c in plain]))
        return hp.HParam(param.key, hp.Discrete(plain) if len(kinds) == 1 else None)
    if param.is_int:
        return hp.HParam(param.key, hp.IntInterval(int(param.low), int(param.high)))
    return hp.HParam(param.key, hp.RealInterval(float(param.low), float(param.high)))


def _plain(value):
    """A value TensorBoard can hold: bool, int, float or str."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)
