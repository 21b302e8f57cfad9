"""The tuner's study without workers: the README's example space fits its base config, and a failed trial is replaced
by a new draw at most `trials` times (real Optuna on SQLite; the worker processes: tests/integration/test_tune*.py)."""
from __future__ import annotations

from optuna.trial import TrialState

from tests.support.spaces import write_space
from tests.support.trainer_runs import ROOT

# 2 params x 3 values (as tests/integration/test_tune_trials.py's space).
DISCRETE = {"optim.lr": {"choices": [0.01, 0.02, 0.05]}, "train.batch_size": {"choices": [16, 32, 64]}}


def test_the_example_space_of_the_readme_fits_its_base():
    from job.tune.space import check_params_against_config, load_space

    space = load_space(str(ROOT / "spaces" / "cifar10_resnet20_lr_wd.yaml"))
    assert (space.trials, space.sampler, space.pruner) == (12, "tpe", "median")
    check_params_against_config(space, "cifar10_resnet20", ["data.validation_split=0.1", "optim.schedule=cosine",
                                                            "train.epochs=30"])


def test_a_failed_draw_is_replaced_and_the_study_stops_after_as_many_failures_as_trials(tmp_path):
    # README, tuning: a failed trial is replaced by a new draw, at most `trials` times. Real Optuna on SQLite; the
    # trials are told their outcome directly (the worker's part: tests/integration/test_tune_trials.py).
    from job.tune.draws import point_of
    from job.tune.space import load_space
    from job.tune.study import ERROR_ATTR, open_study, storage_url

    space = load_space(str(write_space(tmp_path, study="replace", sampler="random", trials=2, params=DISCRETE)))
    study = open_study(space, storage_url(None, str(tmp_path / "study")))
    first = study.take_new()
    first.set_user_attr(ERROR_ATTR, "training diverged")
    study.study.tell(first, state=TrialState.FAIL)
    assert (study.finished(), study.failed(), study.open_slots(), study.done()) == (0, 1, 2, False)
    second = study.take_new()
    assert second is not None

    def point(trial):
        return point_of(study.storage.get_trial(trial._trial_id))

    assert point(second) != point(first) and set(point(second)) == set(DISCRETE)  # a new draw, not the failed values
    second.set_user_attr(ERROR_ATTR, "training diverged")
    study.study.tell(second, state=TrialState.FAIL)
    assert study.done() and study.progress() == "0 of 2 trials finished, 2 failed"
