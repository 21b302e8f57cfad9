"""The data layer: archive loading and its failures, splits, the tf.data pipelines and the preprocessing layer
(downloads and archives in a bucket: tests/integration/test_data_sources.py)."""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from job.config import AugmentConfig, DataConfig  # noqa: E402
from job.data import (  # noqa: E402
    Preprocess,
    augmented_grid,
    eval_dataset,
    fit_preprocessing,
    load_splits,
    steps_per_epoch,
    train_dataset,
)
from job.data.pipeline import epoch_batch_indices  # noqa: E402
from job.distribute.base import Shard  # noqa: E402
from job.errors import ConfigError, DataError  # noqa: E402
from tests.support.cifar_archives import (  # noqa: E402
    CIFAR10_CLASSES,
    CIFAR100_COARSE,
    CIFAR100_FINE,
    CIFAR100_FINE_TO_COARSE,
    cifar_rows_to_nhwc,
    write_cifar10_archive,
    write_cifar100_archive,
)

NO_AUGMENT = AugmentConfig(crop_padding=0, flip=False)


def cifar_cfg(tmp_path, name="cifar10", **kw) -> DataConfig:
    return DataConfig(name=name, dir=str(tmp_path), download=False, **kw)


def official_members(path) -> dict[str, dict]:
    """The archive's pickles read independently of the loader, as the CIFAR page's `unpickle` does."""
    with tarfile.open(path, "r:gz") as tar:
        return {m.name.split("/")[-1]: pickle.load(tar.extractfile(m), encoding="bytes")
                for m in tar.getmembers() if m.isfile()}


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- loading ---------------------------------------------------------------------------------------------------------
def test_cifar10_loads_official_layout(tmp_path):
    md5 = write_cifar10_archive(tmp_path, n_train=60, n_test=20)
    splits = load_splits(cifar_cfg(tmp_path, md5=md5), seed=0)
    assert splits.x_train.shape == (60, 32, 32, 3) and splits.x_train.dtype == np.uint8
    assert splits.x_test.shape == (20, 32, 32, 3)
    assert splits.y_train.dtype == np.int32 and splits.y_train.shape == (60,)
    assert splits.num_classes == 10 and splits.class_names == CIFAR10_CLASSES
    assert splits.x_val is None and splits.y_val is None and splits.fine_to_coarse is None
    members = official_members(tmp_path / "cifar-10-python.tar.gz")
    batches = [members[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(splits.x_train, cifar_rows_to_nhwc(np.concatenate([b[b"data"] for b in batches])))
    np.testing.assert_array_equal(splits.y_train, sum((b[b"labels"] for b in batches), []))
    np.testing.assert_array_equal(splits.x_test, cifar_rows_to_nhwc(members["test_batch"][b"data"]))
    # rows are R, G, B planes: pixel (0, 1) of image 0 is data[0, 1], data[0, 1025], data[0, 2049]
    np.testing.assert_array_equal(splits.x_train[0, 0, 1], batches[0][b"data"][0, [1, 1025, 2049]])


def test_cifar100_fine_labels_and_superclass_mapping(tmp_path):
    md5 = write_cifar100_archive(tmp_path, n_train=200, n_test=100)
    splits = load_splits(cifar_cfg(tmp_path, "cifar100", md5=md5), seed=0)
    assert splits.num_classes == 100 and splits.class_names == CIFAR100_FINE
    assert splits.coarse_names == CIFAR100_COARSE
    np.testing.assert_array_equal(splits.fine_to_coarse, CIFAR100_FINE_TO_COARSE)
    assert splits.class_names[splits.y_train.max()] and 0 <= splits.y_train.min() and splits.y_train.max() < 100
    members = official_members(tmp_path / "cifar-100-python.tar.gz")
    np.testing.assert_array_equal(splits.fine_to_coarse[splits.y_test], members["test"][b"coarse_labels"])
    assert splits.coarse_names[splits.fine_to_coarse[splits.class_names.index("maple_tree")]] == "trees"


def test_cifar100_coarse_label_mode(tmp_path):
    md5 = write_cifar100_archive(tmp_path, n_train=120, n_test=40)
    fine = load_splits(cifar_cfg(tmp_path, "cifar100", md5=md5), seed=0)
    coarse = load_splits(cifar_cfg(tmp_path, "cifar100", md5=md5, label_mode="coarse"), seed=0)
    assert coarse.num_classes == 20 and coarse.class_names == CIFAR100_COARSE
    np.testing.assert_array_equal(coarse.y_train, CIFAR100_FINE_TO_COARSE[fine.y_train])
    np.testing.assert_array_equal(coarse.y_test, fine.fine_to_coarse[fine.y_test])
    np.testing.assert_array_equal(coarse.x_train, fine.x_train)


def test_cifar100_small_archive_marks_unseen_classes(tmp_path):
    md5 = write_cifar100_archive(tmp_path, n_train=30, n_test=10)
    splits = load_splits(cifar_cfg(tmp_path, "cifar100", md5=md5), seed=0)
    seen = np.unique(np.concatenate([splits.y_train, splits.y_test]))
    np.testing.assert_array_equal(splits.fine_to_coarse[seen], CIFAR100_FINE_TO_COARSE[seen])
    assert (np.delete(splits.fine_to_coarse, seen) == -1).all()


def test_wrong_md5_is_refused_and_file_kept(tmp_path):
    write_cifar10_archive(tmp_path, n_train=10, n_test=5)
    archive = tmp_path / "cifar-10-python.tar.gz"
    before = archive.read_bytes()
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path), seed=0)  # md5 unset: the published MD5 of the real archive applies
    assert_one_line(err, str(archive), "c58f30108f718f92721af3b95e74349a", hashlib.md5(before).hexdigest())
    assert archive.read_bytes() == before


def test_truncated_archive(tmp_path):
    write_cifar10_archive(tmp_path, n_train=50, n_test=10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()  # the MD5 matches, so the tar reader must notice
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path, md5=md5), seed=0)
    assert_one_line(err, str(archive), "not a readable tar.gz")
    assert archive.stat().st_size > 0


def test_not_a_gzip_file(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path, md5=hashlib.md5(archive.read_bytes()).hexdigest()), seed=0)
    assert_one_line(err, str(archive), "not a readable tar.gz")


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps(["a", "list"]),
                                     b"cos\nsystem\n(S'echo pwned'\ntR."])
def test_member_that_is_not_a_cifar_pickle(tmp_path, content):
    md5 = write_cifar10_archive(tmp_path, n_train=10, n_test=5, replace={"test_batch": content})
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path, md5=md5), seed=0)
    assert_one_line(err, "cifar-10-batches-py/test_batch")


def test_missing_member(tmp_path):
    md5 = write_cifar10_archive(tmp_path, n_train=10, n_test=5, omit=("data_batch_3",))
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path, md5=md5), seed=0)
    assert_one_line(err, "no member cifar-10-batches-py/data_batch_3", "https://www.cs.toronto.edu/~kriz/")


@pytest.mark.parametrize("batch, problem", [
    ({b"data": np.zeros((4, 3072), np.uint8)}, "lacks key b'fine_labels'"),
    ({b"data": np.zeros((4, 1024), np.uint8), b"fine_labels": [0] * 4, b"coarse_labels": [0] * 4}, "(4, 1024)"),
    ({b"data": np.zeros((4, 3072), np.float32), b"fine_labels": [0] * 4, b"coarse_labels": [0] * 4}, "float32"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0] * 3, b"coarse_labels": [0] * 4}, "4 integer"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 100], b"coarse_labels": [0] * 4}, "outside"),
])
def test_wrong_keys_or_shapes(tmp_path, batch, problem):
    md5 = write_cifar100_archive(tmp_path, n_train=10, n_test=5, replace={"train": pickle.dumps(batch, protocol=2)})
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path, "cifar100", md5=md5), seed=0)
    assert_one_line(err, "cifar-100-python/train", problem)


def test_missing_archive_with_download_off(tmp_path):
    with pytest.raises(DataError) as err:
        load_splits(cifar_cfg(tmp_path / "nowhere", "cifar100"), seed=0)
    assert_one_line(err, str(tmp_path / "nowhere" / "cifar-100-python.tar.gz"), "data.download",
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")


def test_validation_split_is_stratified_and_deterministic(tmp_path):
    md5 = write_cifar10_archive(tmp_path, n_train=400, n_test=10)
    cfg = cifar_cfg(tmp_path, md5=md5, validation_split=0.1)
    full = load_splits(cifar_cfg(tmp_path, md5=md5), seed=0)
    a, b, c = load_splits(cfg, seed=1), load_splits(cfg, seed=1), load_splits(cfg, seed=2)
    assert len(a.y_val) == 40 and len(a.y_train) == 360
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)
    np.testing.assert_array_equal(np.bincount(a.y_val, minlength=10), np.bincount(full.y_train, minlength=10) // 10)
    # train and validation partition the original training set
    key = lambda x: {bytes(img) for img in x.reshape(len(x), -1)}  # noqa: E731
    assert key(a.x_train) | key(a.x_val) == key(full.x_train) and not key(a.x_train) & key(a.x_val)


def test_digits_load_offline():
    splits = load_splits(DataConfig(name="digits", validation_split=0.1), seed=0)
    assert splits.x_train.shape[1:] == (32, 32, 3) and splits.x_train.dtype == np.uint8
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 1797
    assert len(splits.x_test) == 359 and splits.num_classes == 10
    assert splits.x_train.max() == 255 and splits.x_train.min() == 0
    assert (splits.x_train[..., 0] == splits.x_train[..., 2]).all()  # grey
    assert np.bincount(splits.y_test).min() >= 35  # every digit in the test set, in proportion
    again = load_splits(DataConfig(name="digits"), seed=5)
    np.testing.assert_array_equal(again.x_test, splits.x_test)  # the test split does not depend on the seed


def test_synthetic_only_when_asked():
    splits = load_splits(DataConfig(name="synthetic", synthetic_examples=64), seed=0)
    assert splits.x_train.shape == (64, 32, 32, 3) and splits.y_train.max() < splits.num_classes
    with pytest.raises(DataError):
        load_splits(DataConfig(name="cifar10", dir="/nonexistent", download=False), seed=0)


# --- pipeline --------------------------------------------------------------------------------------------------------
def indexed_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first pixel spells their index (base 256), the rest random; labels = index % 10."""
    x = np.random.default_rng(0).integers(1, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    i = np.arange(n)
    x[:, 0, 0] = np.stack([i // 65536, (i // 256) % 256, i % 256], axis=1)
    return x, (i % 10).astype(np.int32)


def indices_of(images) -> np.ndarray:
    px = np.rint(np.asarray(images)[:, 0, 0]).astype(np.int64)
    return px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2]


def batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_train_dataset_shapes_and_ranges():
    x, y = indexed_images(100)
    cfg = DataConfig(augment=AugmentConfig(crop_padding=4, flip=True, rotation_degrees=15, zoom=0.1, cutout=8))
    out = batches(train_dataset(x, y, cfg, Shard(1, 0, 16), seed=0, epoch=0))
    assert len(out) == steps_per_epoch(100, 16) == 6
    for images, labels in out:
        assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
        assert labels.shape == (16,) and labels.dtype == np.int32
        assert images.min() >= 0 and images.max() <= 255


def test_pipelines_run_without_tf_data_autotuning():
    """Autotuning's thread can sleep up to a minute, and an iterator dropped mid-epoch (SIGTERM) waits for it to wake
    before the preemption checkpoint can be saved (job/data/pipeline.py; docs/performance.md, 'Preemption')."""
    x, y = indexed_images(64)
    cut_short = train_dataset(x, y, DataConfig(augment=NO_AUGMENT), Shard(1, 0, 8), seed=0, epoch=0).take(2)
    assert cut_short.options().autotune.enabled is False
    assert eval_dataset(x, y, 16).options().autotune.enabled is False


def test_epoch_order_is_deterministic_and_changes_with_epoch():
    x, y = indexed_images(64)
    cfg = DataConfig(augment=NO_AUGMENT)
    shard = Shard(1, 0, 8)
    first = [indices_of(b[0]) for b in batches(train_dataset(x, y, cfg, shard, seed=3, epoch=0))]
    again = [indices_of(b[0]) for b in batches(train_dataset(x, y, cfg, shard, seed=3, epoch=0))]
    later = [indices_of(b[0]) for b in batches(train_dataset(x, y, cfg, shard, seed=3, epoch=1))]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, later)
    assert sorted(np.concatenate(first)) == list(range(64))  # a permutation: each example once


def test_augmentation_is_reproducible_whatever_the_threading():
    x, y = indexed_images(96)
    cfg = DataConfig(augment=AugmentConfig(crop_padding=4, flip=True, rotation_degrees=10, cutout=6))
    one_thread = tf.data.Options()
    one_thread.threading.private_threadpool_size = 1
    a = batches(train_dataset(x, y, cfg, Shard(1, 0, 16), seed=1, epoch=2).with_options(one_thread))
    b = batches(train_dataset(x, y, cfg, Shard(1, 0, 16), seed=1, epoch=2))
    c = batches(train_dataset(x, y, cfg, Shard(1, 0, 16), seed=2, epoch=2))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_skip_batches_resumes_exactly():
    x, y = indexed_images(100)
    cfg = DataConfig(augment=AugmentConfig(crop_padding=4, flip=True, cutout=8))
    full = batches(train_dataset(x, y, cfg, Shard(1, 0, 10), seed=0, epoch=4))
    resumed = batches(train_dataset(x, y, cfg, Shard(1, 0, 10), seed=0, epoch=4, skip_batches=3))
    assert len(resumed) == len(full) - 3 == 7
    for (xf, yf), (xr, yr) in zip(full[3:], resumed):
        np.testing.assert_array_equal(xf, xr)
        np.testing.assert_array_equal(yf, yr)


def test_shards_are_disjoint_and_cover_the_epoch():
    x, y = indexed_images(100)
    cfg = DataConfig(augment=NO_AUGMENT)
    per_worker = [np.concatenate([indices_of(b[0]) for b in batches(
        train_dataset(x, y, cfg, Shard(3, i, 8), seed=0, epoch=1))]) for i in range(3)]
    assert all(len(p) == 4 * 8 for p in per_worker)  # 100 // 24 = 4 steps; 4 examples dropped
    together = np.concatenate(per_worker)
    assert len(set(together)) == 96
    # the workers' slices of step s together are the global batch s of a single pipeline with the global batch
    single = epoch_batch_indices(100, Shard(1, 0, 24), seed=0, epoch=1)
    np.testing.assert_array_equal(np.concatenate([p[:8] for p in per_worker]), single[0])


@pytest.mark.parametrize("augment", [AugmentConfig(crop_padding=4, flip=True, cutout=8),
                                     AugmentConfig(crop_padding=4, flip=True, rotation_degrees=15, zoom=0.1)],
                         ids=["crop-flip-cutout", "affine"])
def test_a_global_batch_split_over_workers_is_augmented_as_one_worker_augments_it(augment):
    """What lets a run resume on another number of workers: the random numbers of a global batch are drawn whole and
    each worker keeps its slice, so 1, 2 or 4 workers see the same augmented images at every step."""
    x, y = indexed_images(100)
    cfg = DataConfig(augment=augment)
    one = batches(train_dataset(x, y, cfg, Shard(1, 0, 24), seed=3, epoch=1))
    for workers in (2, 4):
        parts = [batches(train_dataset(x, y, cfg, Shard(workers, i, 24 // workers), seed=3, epoch=1))
                 for i in range(workers)]
        for step, (images, labels) in enumerate(one):
            # the gather path is exact; the bilinear transform rounds by batch layout (under 1e-2 of 255 measured)
            np.testing.assert_allclose(np.concatenate([p[step][0] for p in parts]), images, rtol=0,
                                       atol=0 if augment.rotation_degrees == 0 else 1e-2)
            np.testing.assert_array_equal(np.concatenate([p[step][1] for p in parts]), labels)


def test_labels_follow_their_images():
    x, y = indexed_images(50)
    for images, labels in batches(train_dataset(x, y, DataConfig(augment=NO_AUGMENT), Shard(1, 0, 7), 0, 0)):
        np.testing.assert_array_equal(labels, indices_of(images) % 10)


@pytest.mark.parametrize("rotation", [0.0, 1e-4])  # 0: the gather path; tiny: the affine (bilinear) path
def test_pad_crop_and_flip_are_shifts_and_mirrors(rotation):
    x, y = indexed_images(32)
    cfg = DataConfig(augment=AugmentConfig(crop_padding=4, flip=True, rotation_degrees=rotation))
    same = np.array_equal if rotation == 0 else functools.partial(np.allclose, atol=0.1)
    out = batches(train_dataset(x, y, cfg, Shard(1, 0, 32), seed=0, epoch=0))[0][0]
    order = epoch_batch_indices(32, Shard(1, 0, 32), seed=0, epoch=0)[0]
    padded = np.pad(x.astype(np.float32), ((0, 0), (4, 4), (4, 4), (0, 0)))

    def crop(i, dy, dx, flip):
        window = padded[i, dy:dy + 32, dx:dx + 32]
        return window[:, ::-1] if flip else window

    shifts, flips = set(), 0
    for image, i in zip(out, order):
        candidates = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                      if same(image, crop(i, dy, dx, flip))]
        assert candidates, f"image {i} is not a zero-padded crop (or its mirror)"
        shifts.add(candidates[0][:2])
        flips += candidates[0][2]
    assert len(shifts) > 5 and 0 < flips < 32


def test_cutout_zeroes_one_square():
    x, y = indexed_images(16)
    cfg = DataConfig(augment=AugmentConfig(crop_padding=0, flip=False, cutout=8))
    images = batches(train_dataset(x, y, cfg, Shard(1, 0, 16), seed=0, epoch=0))[0][0]
    order = epoch_batch_indices(16, Shard(1, 0, 16), seed=0, epoch=0)[0]
    for image, i in zip(images, order):
        cut = (image != x[i]).any(axis=-1)
        rows, cols = np.flatnonzero(cut.any(axis=1)), np.flatnonzero(cut.any(axis=0))
        assert (image[cut] == 0).all() and 0 < cut.sum() <= 64
        assert cut.sum() == len(rows) * len(cols) and len(rows) <= 8 and len(cols) <= 8  # one (clipped) square


def test_eval_dataset_covers_everything_in_order():
    x, y = indexed_images(23)
    out = batches(eval_dataset(x, y, batch_size=5))
    assert [len(b[1]) for b in out] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([indices_of(b[0]) for b in out]), np.arange(23))
    assert out[0][0].dtype == np.float32 and out[0][1].dtype == np.int32
    np.testing.assert_array_equal(out[0][0], x[:5].astype(np.float32))
    parts = [np.concatenate([indices_of(b[0]) for b in batches(eval_dataset(x, y, 4, Shard(3, i, 4)))])
             for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(23))
    assert [len(p) for p in parts] == [8, 8, 7]


def test_steps_per_epoch():
    assert steps_per_epoch(50000, 128) == 390
    with pytest.raises(ConfigError):
        steps_per_epoch(100, 128)


def test_augmented_grid():
    images = np.random.default_rng(0).uniform(0, 255, size=(20, 32, 32, 3)).astype(np.float32)
    grid = augmented_grid(images, n=16)
    assert grid.shape == (1, 128, 128, 3) and grid.dtype == tf.uint8
    np.testing.assert_array_equal(grid[0, 32:64, 64:96].numpy(), np.rint(images[6]).astype(np.uint8))
    assert augmented_grid(images[:5]).shape == (1, 64, 96, 3)


def test_train_throughput_one_thread():
    """Measures (prints) augmented images/s on CIFAR-sized synthetic data with one tf.data thread."""
    splits = load_splits(DataConfig(name="synthetic", synthetic_examples=10240), seed=0)
    one_thread = tf.data.Options()
    one_thread.threading.private_threadpool_size = 1
    one_thread.threading.max_intra_op_parallelism = 1
    for augment in (AugmentConfig(), AugmentConfig(rotation_degrees=10, zoom=0.1, cutout=8)):
        ds = train_dataset(splits.x_train, splits.y_train, DataConfig(augment=augment), Shard(1, 0, 128), 0, 0)
        it = iter(ds.with_options(one_thread))
        next(it)  # warm up (tracing)
        start, cpu_start, count = time.perf_counter(), time.process_time(), 0
        for images, _ in it:
            count += images.shape[0]
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        # images per CPU-second is the per-core rate even when other processes share the machine
        print(f"\ntrain_dataset, 1 thread, {augment}: {count / wall:,.0f} images/s wall, "
              f"{count / cpu:,.0f} images per CPU-second")
        assert count == 79 * 128


# --- preprocessing ---------------------------------------------------------------------------------------------------
def test_standardize_gives_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal([60, 120, 200], [10, 40, 20], size=(500, 8, 8, 3)), 0, 255).astype(np.uint8)
    layer = Preprocess("standardize", image_shape=(8, 8, 3))
    layer.set_stats(fit_preprocessing(x, "standardize"))
    out = layer(x.astype(np.float32)).numpy().reshape(-1, 3)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-3)


def correlated_images(n: int, side: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    d = side * side * 3
    mixing = rng.normal(size=(d, d)) + 3 * np.eye(d)
    flat = rng.normal(size=(n, d)) @ mixing.T + 5 * rng.normal(size=(n, 1))  # strongly correlated pixels
    return np.clip(128 + 6 * flat, 0, 255).astype(np.uint8).reshape(n, side, side, 3)


def test_gcn_zca_whitens_the_fit_data(monkeypatch):
    x = correlated_images(3000)
    flat = x.reshape(len(x), -1).astype(np.float64)
    d = flat.shape[1]
    assert np.abs(np.corrcoef(flat, rowvar=False) - np.eye(d)).max() > 0.5
    monkeypatch.setattr("job.data.preprocess.ZCA_FILTER_BIAS", 1e-6)  # (almost) exact whitening, to check the math
    layer = Preprocess("gcn_zca", image_shape=x.shape[1:])
    layer.set_stats(fit_preprocessing(x, "gcn_zca"))
    white = layer(x.astype(np.float32)).numpy().reshape(len(x), -1).astype(np.float64)
    cov = np.cov(white, rowvar=False, bias=True)
    # GCN removes each image's mean, so the all-ones direction has no variance left: identity on the rest
    expected = np.eye(d) - np.ones((d, d)) / d
    np.testing.assert_allclose(cov, expected, atol=2e-3)


def test_gcn_zca_default_bias_damps_weak_directions():
    x = correlated_images(3000)
    stats = fit_preprocessing(x, "gcn_zca")
    layer = Preprocess("gcn_zca", image_shape=x.shape[1:])
    layer.set_stats(stats)
    white = layer(x.astype(np.float32)).numpy().reshape(len(x), -1)
    eigenvalues = np.linalg.eigvalsh(np.cov(white, rowvar=False, bias=True))
    assert eigenvalues.max() < 1.0 + 1e-3  # whitened variance s / (s + bias) never exceeds 1
    assert eigenvalues[-10:].min() > 0.9  # strong directions are whitened to ~1
    corr = np.corrcoef(white, rowvar=False)
    assert np.abs(corr - np.eye(len(corr))).max() < 0.2


def test_zca_from_few_images_equals_the_covariance_formula():
    """Fewer images than dimensions take the thin-SVD route; it must give (C + bias I)^(-1/2) all the same."""
    from job.data.preprocess import ZCA_FILTER_BIAS, gcn

    x = np.random.default_rng(1).integers(0, 256, size=(100, 8, 8, 3), dtype=np.uint8)  # 100 < 192 dimensions
    stats = fit_preprocessing(x, "gcn_zca")
    flat = gcn(x.reshape(100, -1).astype(np.float64))
    centred = flat - flat.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / 100)
    expected = (vectors / np.sqrt(np.maximum(eigenvalues, 0) + ZCA_FILTER_BIAS)) @ vectors.T
    np.testing.assert_allclose(stats["zca_matrix"], expected, atol=1e-5)
    np.testing.assert_allclose(stats["zca_mean"], flat.mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("mode", ["standardize", "gcn_zca", "none"])
def test_preprocess_survives_keras_save_and_checkpoint(tmp_path, mode):
    x = correlated_images(300)
    inputs = keras.Input(shape=x.shape[1:])
    layer = Preprocess(mode, image_shape=x.shape[1:], name="preprocess")
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    layer.set_stats(fit_preprocessing(x, mode))
    assert not layer.trainable_weights
    expected = model.predict(x[:8].astype(np.float32), verbose=0)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x[:8].astype(np.float32), verbose=0), expected, rtol=1e-5, atol=1e-5)
    for name, weight in layer.stats.items():
        np.testing.assert_array_equal(loaded.get_layer("preprocess").stats[name].numpy(), weight.numpy())

    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = Preprocess(mode, image_shape=x.shape[1:], name="preprocess")
    clone = keras.Model(inputs := keras.Input(shape=x.shape[1:]),
                        keras.layers.Dense(3)(keras.layers.Flatten()(fresh(inputs))))
    tf.train.Checkpoint(model=clone).read(str(tmp_path / "ckpt")).assert_consumed()
    for name, weight in layer.stats.items():
        np.testing.assert_array_equal(fresh.stats[name].numpy(), weight.numpy())


def test_preprocess_computes_in_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = Preprocess("gcn_zca", image_shape=(4, 4, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert layer.compute_dtype == "float32"
    assert layer(np.zeros((2, 4, 4, 3), np.float32)).dtype == "float32"


def test_tar_helper_matches_official_member_names(tmp_path):
    write_cifar100_archive(tmp_path, n_train=100, n_test=10)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz") as tar:
        names = tar.getnames()
    assert names == ["cifar-100-python", "cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]
    members = official_members(tmp_path / "cifar-100-python.tar.gz")
    assert set(members["train"]) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert members["train"][b"data"].dtype == np.uint8 and isinstance(members["train"][b"fine_labels"], list)
