"""The fast preset's pieces (docs/configuration.md "Recipes"): the triangular schedule, the `digits_noisy` task made
to not
saturate, the preset itself, and the TTA key's YAML spelling."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from job.config import DataConfig, load_config  # noqa: E402
from job.data import load_splits  # noqa: E402
from job.errors import ConfigError  # noqa: E402
from job.optim import WarmupSchedule  # noqa: E402


def test_triangular_schedule_rises_linearly_to_the_peak_then_falls_linearly_to_zero():
    schedule = WarmupSchedule(base_lr=2.0, total_steps=100, warmup_steps=20, kind="triangular")
    lr = {s: float(schedule(s)) for s in (0, 9, 19, 20, 60, 99, 100)}
    assert lr[0] == pytest.approx(2.0 * 1 / 20) and lr[9] == pytest.approx(2.0 * 10 / 20)
    assert lr[19] == pytest.approx(2.0) and lr[20] == pytest.approx(2.0)
    assert lr[60] == pytest.approx(1.0)  # halfway down
    assert lr[99] == pytest.approx(2.0 / 80) and lr[100] == 0.0


def test_the_fast_preset_states_the_recipe_the_readme_describes():
    cfg = load_config("cifar10_airbench")
    assert (cfg.model.name, cfg.data.name, cfg.train.batch_size, cfg.train.epochs) == ("airbench94", "cifar10", 1024,
                                                                                       10)
    assert (cfg.optim.schedule, cfg.optim.label_smoothing, cfg.optim.nesterov, cfg.train.tta) == (
        "triangular", 0.2, True, "flip-translate")
    assert cfg.optim.lr * cfg.train.batch_size / 256 == pytest.approx(1.5)


def test_tta_off_is_read_as_the_mode_although_yaml_reads_off_as_false():
    assert load_config("cifar10_airbench", ["train.tta=off"]).train.tta == "off"
    with pytest.raises(ConfigError, match=r"train.tta='rotate' is not one of off, flip, flip-translate"):
        load_config("cifar10_airbench", ["train.tta=rotate"])
    with pytest.raises(ConfigError, match="train.tta must be str, got True"):
        load_config("cifar10_airbench", ["train.tta=on"])


def test_digits_noisy_is_the_digits_made_hard_and_the_same_in_every_run():
    clean = load_splits(DataConfig(name="digits"), seed=0)
    noisy = load_splits(DataConfig(name="digits_noisy"), seed=0)
    again = load_splits(DataConfig(name="digits_noisy"), seed=7)  # train.seed does not change the task
    np.testing.assert_array_equal(noisy.x_train, again.x_train)
    np.testing.assert_array_equal(noisy.x_test, again.x_test)
    assert noisy.x_train.shape == clean.x_train.shape and noisy.x_train.dtype == np.uint8
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)  # test labels stay true
    wrong = (noisy.y_train != clean.y_train).mean()
    assert 0.17 < wrong < 0.23, wrong  # 20% of the training labels replaced by another class
    # heavy noise: the pixels' spread around a blank canvas is the noise's, not the digit's
    assert 55 < noisy.x_test[..., 0].std() < 85
