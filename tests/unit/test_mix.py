"""Mixup and CutMix in the train pipeline (job/data/mix.py; docs/configuration.md "Recipes"): the stated convex
combinations, the
same global batch on any number of workers, and the range checks of data.mix.*."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from job.config import AugmentConfig, DataConfig, MixConfig, load_config  # noqa: E402
from job.data import train_dataset  # noqa: E402
from job.data.mix import dominant_labels  # noqa: E402
from job.distribute.base import Shard  # noqa: E402
from job.errors import ConfigError  # noqa: E402

NO_AUGMENT = AugmentConfig(crop_padding=0, flip=False)
CLASSES = 10  # data.name=synthetic's
BATCH = 16
WHOLE = Shard(1, 0, BATCH)  # one worker taking the global batch


def noise_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels (two images almost never share a pixel value by chance) and random labels."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, CLASSES, size=n, dtype=np.int32))


def epoch(mix: MixConfig, augment: AugmentConfig = NO_AUGMENT, shard: Shard = WHOLE, n: int = 96,
          seed: int = 5, epoch_index: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = noise_images(n)
    cfg = DataConfig(name="synthetic", augment=augment, mix=mix)
    return [(a.numpy(), b.numpy()) for a, b in train_dataset(x, y, cfg, shard, seed=seed, epoch=epoch_index)]


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[labels]


def lam_of(plain_labels: np.ndarray, soft: np.ndarray) -> float:
    """The batch's lambda, read off the soft label of an example whose partner (G-1-p) has another class."""
    partner = plain_labels[::-1]
    p = int(np.flatnonzero(plain_labels != partner)[0])
    return float(soft[p, plain_labels[p]])


def test_mixup_is_the_convex_combination_of_each_example_and_its_mirror_in_the_batch():
    augment = AugmentConfig(crop_padding=4, flip=True)  # mixing comes after augmentation, same images
    plain = epoch(MixConfig(), augment)
    mixed = epoch(MixConfig(mixup_alpha=1.0), augment)
    lams = []
    for (x, y), (mx, soft) in zip(plain, mixed):
        assert soft.shape == (BATCH, CLASSES) and soft.dtype == np.float32
        lam = lam_of(y, soft)
        lams.append(lam)
        np.testing.assert_allclose(mx, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(soft, lam * one_hot(y) + (1 - lam) * one_hot(y[::-1]), atol=1e-6)
    assert all(0 < lam < 1 for lam in lams), lams
    assert len(set(lams)) == len(lams)  # one draw per batch


def test_cutmix_pastes_one_box_from_the_mirror_and_the_label_weight_is_the_box_area():
    plain = epoch(MixConfig())
    mixed = epoch(MixConfig(cutmix_alpha=1.0))
    boxes = 0
    for (x, y), (mx, soft) in zip(plain, mixed):
        partner = x[::-1]
        from_partner = np.all(mx == partner, axis=-1) & np.any(mx != x, axis=-1)  # (B, H, W)
        np.testing.assert_array_equal(from_partner, from_partner[:1].repeat(BATCH, 0))  # one box for the batch
        box = from_partner[0]
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        if box.any():
            boxes += 1
            assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a rectangle
        inside = box[None, :, :, None]
        np.testing.assert_array_equal(mx, np.where(inside, partner, x))
        lam = 1.0 - box.sum() / box.size  # timm's correct_lam: the share of the image kept
        np.testing.assert_allclose(soft, lam * one_hot(y) + (1 - lam) * one_hot(y[::-1]), atol=1e-6)
    assert boxes >= len(plain) - 1, "CutMix pasted (almost) nothing"


@pytest.mark.parametrize("switch_prob, kind", [(0.0, "mixup"), (1.0, "cutmix")])
def test_switch_prob_chooses_between_mixup_and_cutmix(switch_prob, kind):
    plain = epoch(MixConfig())
    mixed = epoch(MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob))
    for (x, _), (mx, _) in zip(plain, mixed):
        kept = np.all(mx == x, axis=-1).mean()  # CutMix keeps the pixels outside its box; mixup none
        assert (kept > 0.05) == (kind == "cutmix"), kept


def test_prob_zero_mixes_nothing_but_labels_are_still_soft():
    for (x, y), (mx, soft) in zip(epoch(MixConfig()), epoch(MixConfig(mixup_alpha=1.0, prob=0.0))):
        np.testing.assert_array_equal(mx, x)
        np.testing.assert_array_equal(soft, one_hot(y))


def test_prob_mixes_that_share_of_the_batches():
    batches = epoch(MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5), n=1600)
    unmixed = sum(np.array_equal(soft, one_hot(soft.argmax(1))) for _, soft in batches)
    # 100 batches, each mixed with probability 0.5 (a fixed draw of a fixed seed: the same count every run)
    assert 30 <= unmixed <= 70, unmixed


@pytest.mark.parametrize("workers", [2, 4])
def test_the_mixed_global_batch_is_the_same_on_any_number_of_workers(workers):
    mix = MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0)
    augment = AugmentConfig(crop_padding=4, flip=True, cutout=6)
    whole = epoch(mix, augment, Shard(1, 0, BATCH))
    parts = [epoch(mix, augment, Shard(workers, i, BATCH // workers)) for i in range(workers)]
    for step, (x, soft) in enumerate(whole):
        np.testing.assert_allclose(np.concatenate([p[step][0] for p in parts]), x, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(np.concatenate([p[step][1] for p in parts]), soft, atol=1e-7)


def test_a_resumed_epoch_sees_the_same_mixed_batches():
    x, y = noise_images(96)
    cfg = DataConfig(name="synthetic", augment=AugmentConfig(), mix=MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0))
    full = [(a.numpy(), b.numpy()) for a, b in train_dataset(x, y, cfg, Shard(1, 0, 8), seed=2, epoch=3)]
    resumed = [(a.numpy(), b.numpy()) for a, b in train_dataset(x, y, cfg, Shard(1, 0, 8), seed=2, epoch=3,
                                                                skip_batches=4)]
    for (xf, yf), (xr, yr) in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(xf, xr)
        np.testing.assert_array_equal(yf, yr)


def test_train_metrics_count_a_mixed_example_against_its_dominant_label():
    soft = np.array([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8]], np.float32)
    np.testing.assert_array_equal(dominant_labels(soft).numpy(), [0, 2])
    np.testing.assert_array_equal(dominant_labels(np.array([1, 2], np.int32)).numpy(), [1, 2])


@pytest.mark.parametrize("override, message", [
    ("data.mix.mixup_alpha=-1", "data.mix.mixup_alpha must be >= 0, got -1.0"),
    ("data.mix.prob=1.5", "data.mix.prob must be in [0, 1], got 1.5"),
    ("data.mix.switch_prob=-0.1", "data.mix.switch_prob must be in [0, 1], got -0.1"),
    ("data.mix.alpha=1", "unknown config key 'data.mix.alpha'"),
])
def test_bad_mix_settings_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("digits_resnet20", [override])
    assert message in str(err.value) and "\n" not in str(err.value)
