"""Streamed folder datasets (docs/own-images.md "Streaming"): a folder whose decoded images are over
data.max_decoded_gb is read batch by batch from its shard files, with the same batches as in memory, in bounded
memory; a gs:// cache is copied to $TMPDIR/job-decoded/<key> first."""
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job.config import AugmentConfig, DataConfig, MixConfig
from job.data import load_splits, shards
from job.data.shards import ShardedImages
from job.distribute.base import Shard
from tests.unit.test_folder_data import class_folders, folder_cfg

ROOT = Path(__file__).resolve().parents[2]


def sharded(tmp_path: Path, x: np.ndarray, cuts: list[int]) -> ShardedImages:
    paths = []
    for n, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(x)])):
        paths.append(tmp_path / f"shard-{n:05d}.npy")
        np.save(paths[-1], x[lo:hi])
    return ShardedImages(paths)


def test_sharded_images_read_rows_across_shards_like_the_array(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    images = sharded(tmp_path, x, [7, 30])
    assert len(images) == 50 and images.shape == x.shape and images.dtype == np.uint8
    ids = np.array([49, 0, 6, 7, 29, 30, 6])
    np.testing.assert_array_equal(images.take(ids), x[ids])
    np.testing.assert_array_equal(images[3], x[3])
    np.testing.assert_array_equal(images[10:40:3], x[10:40:3])
    subset = images.select(np.array([45, 2, 31]))  # lazy: still on disk
    assert isinstance(subset, ShardedImages) and subset.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(subset.take([2, 0]), x[[31, 45]])
    with pytest.raises(TypeError, match="streamed from disk"):
        np.asarray(images)  # never the whole set by accident


def test_streamed_batches_are_the_in_memory_batches_bit_for_bit(tmp_path):
    """train (2 workers, augmentation and CutMix/mixup, resumed mid-epoch), calibration and evaluation pipelines."""
    from job.data.pipeline import calibration_dataset, eval_dataset, train_dataset

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (150, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 5, 150).astype(np.int32)
    keep = np.sort(rng.permutation(150)[:120])  # a training subset, as after a validation split
    streamed = sharded(tmp_path, x, [41, 100]).select(keep)
    cfg = DataConfig(name="folder", image_size=16,
                     augment=AugmentConfig(crop_padding=2, flip=True, rotation_degrees=10, zoom=0.1, cutout=4),
                     mix=MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0))

    def same(a, b):
        pairs = list(zip(a, b, strict=True))
        assert pairs
        for (xa, ya), (xb, yb) in pairs:
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())

    for worker in range(2):
        shard = Shard(2, worker, 8)
        same(train_dataset(x[keep], y[keep], cfg, shard, seed=5, epoch=3, skip_batches=2),
             train_dataset(streamed, y[keep], cfg, shard, seed=5, epoch=3, skip_batches=2))
        same(calibration_dataset(x[keep], shard, seed=5, epoch=3, batches=3),
             calibration_dataset(streamed, shard, seed=5, epoch=3, batches=3))
        same(eval_dataset(x[keep], y[keep], 16, shard), eval_dataset(streamed, y[keep], 16, shard))


def test_streamed_and_in_memory_loads_write_the_same_cache_and_give_the_same_data(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="job")
    monkeypatch.setattr(shards, "SHARD_BYTES", 7 * 24 * 24 * 3)  # 7 images a shard: the 16 train images span 3
    root = class_folders(tmp_path / "pets", per_class=12)
    write = {mode: load_splits(folder_cfg(root, tmp_path / mode, "data.image_size=24", f"data.stream={mode}",
                                          "data.validation_split=0.25"), seed=0)
             for mode in ("never", "always")}
    memory, streamed = write["never"], write["always"]
    assert isinstance(streamed.x_train, ShardedImages) and isinstance(memory.x_train, np.ndarray)
    assert "streaming the decoded images from their shards" in caplog.text
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(memory, f"x_{part}"),
                                      getattr(streamed, f"x_{part}")[0:len(getattr(memory, f"x_{part}"))])
        np.testing.assert_array_equal(getattr(memory, f"y_{part}"), getattr(streamed, f"y_{part}"))
    manifests = [next((tmp_path / mode).glob("*/manifest.json")).read_text() for mode in ("never", "always")]
    assert manifests[0] == manifests[1]  # the same shards, byte for byte (their SHA-256s are in the manifest)
    assert len(list((tmp_path / "always").glob("*/shard-*.npy"))) == 4 and not list(
        (tmp_path / "always").glob("*/staging-*"))

    # Normalisation statistics: the same from the streamed set, read in chunks.
    from job.data.preprocess import fit_preprocessing

    for key, value in fit_preprocessing(memory.x_train, "standardize").items():
        np.testing.assert_array_equal(value, fit_preprocessing(streamed.x_train, "standardize")[key])

    # Each way reads the other's cache: data.stream may change between a run and its resume.
    caplog.clear()
    again = load_splits(folder_cfg(root, tmp_path / "never", "data.image_size=24", "data.stream=always",
                                   "data.validation_split=0.25"), seed=0)
    assert "using the decoded cache" in caplog.text and "decoding" not in caplog.text
    np.testing.assert_array_equal(again.x_train[0:len(again.x_train)], memory.x_train)


def test_auto_streams_above_max_decoded_gb_only(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="job")
    root = class_folders(tmp_path / "d")  # 20 images at 32: 61,440 bytes decoded
    below = load_splits(folder_cfg(root, tmp_path / "cache", "data.max_decoded_gb=0.0001"), seed=0)
    assert isinstance(below.x_train, np.ndarray) and "streaming" not in caplog.text
    above = load_splits(folder_cfg(root, tmp_path / "cache", "data.max_decoded_gb=0.00005"), seed=0)
    assert isinstance(above.x_train, ShardedImages)
    assert "streaming the decoded images from their shards (61.4 kB decoded; data.stream=auto" in caplog.text


def test_a_streamed_gs_cache_is_copied_to_tmpdir_and_a_damaged_copy_is_fetched_again(tmp_path, gcs_bucket,
                                                                                     monkeypatch, caplog):
    from job.storage import open_storage

    caplog.set_level(logging.INFO, logger="job")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    local = class_folders(tmp_path / "pets")
    bucket = open_storage(gcs_bucket)
    for path in sorted(local.rglob("*.png")):
        bucket.write_bytes(f"pets/{path.relative_to(local).as_posix()}", path.read_bytes())
    cfg = folder_cfg(f"{gcs_bucket}/pets", f"{gcs_bucket}/cache", "data.stream=always")
    first = load_splits(cfg, seed=0)  # decodes: shards staged in $TMPDIR, uploaded, kept there as the copy
    here = load_splits(folder_cfg(local, tmp_path / "cache"), seed=0)
    np.testing.assert_array_equal(first.x_test[0:len(first.x_test)], here.x_test)
    (copy,) = (tmp_path / "tmp" / "job-decoded").glob("*/shard-00000.npy")
    assert [n for n in bucket.list("cache/") if n.endswith("shard-00000.npy")]
    assert not list(copy.parent.glob("staging-*"))

    copy.write_bytes(copy.read_bytes()[:-1] + b"\x00")  # a damaged local copy: fetched again from the bucket
    caplog.clear()
    again = load_splits(cfg, seed=0)
    assert "using the decoded cache gs://" in caplog.text and "decoding" not in caplog.text
    np.testing.assert_array_equal(again.x_train[0:len(again.x_train)], here.x_train)


# A fresh process with TensorFlow loaded, as the trainer has, decodes and loads a streamed folder, computes its
# normalisation statistics and runs an epoch of the training pipeline over it (augmented, batches of 32); it prints
# the images, its resident memory before (VmRSS) and its peak after (VmHWM: its own, not the forking pytest's), in MiB.
STREAM_IN_A_FRESH_PROCESS = """
import sys
from job.config import load_config
from job.data import load_splits
from job.data.pipeline import train_dataset
from job.data.preprocess import fit_preprocessing
from job.data.shards import ShardedImages
from job.distribute.base import Shard
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) // 1024
before = status("VmRSS:")
cfg = load_config("digits_resnet20", ["data.name=folder", f"data.dir={sys.argv[1]}", f"data.cache_dir={sys.argv[2]}",
                                      "data.image_size=192", "data.max_decoded_gb=0.01", "data.validation_split=0",
                                      "data.augment.crop_padding=8", "data.augment.flip=true"]).data
splits = load_splits(cfg, seed=0)
assert isinstance(splits.x_train, ShardedImages)
fit_preprocessing(splits.x_train, "standardize")
batches = sum(1 for _ in train_dataset(splits.x_train, splits.y_train, cfg, Shard(1, 0, 32), seed=0, epoch=0))
assert batches == len(splits.x_train) // 32, batches
print(len(splits.x_train) + len(splits.x_test), before, status("VmHWM:"))
"""


@pytest.mark.timeout(600)
def test_a_streamed_run_reads_a_dataset_far_larger_than_its_peak_memory(tmp_path):
    """docs/own-images.md "Streaming": 4,800 images at 192x192, 531 MB decoded, over a limit of 10 MB; decoding them,
    their statistics and an epoch of training batches add under a third of that to the process's memory (measured:
    +140 MB, mostly the pipeline's batches in flight; the same set in memory: +950 MB after two epochs)."""
    root = tmp_path / "photos"
    for c, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True)
        for i in range(1600):  # small random PNGs, decoded up to 192x192
            pixels = np.random.default_rng(c * 10_000 + i).integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    result = subprocess.run([sys.executable, "-c", STREAM_IN_A_FRESH_PROCESS, str(root), str(tmp_path / "cache")],
                            cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    images, before_mb, peak_mb = (int(v) for v in result.stdout.split())
    decoded_mb = images * 192 * 192 * 3 / 2**20
    assert images == 4800 and decoded_mb > 500
    assert peak_mb - before_mb < decoded_mb / 3, (before_mb, peak_mb, decoded_mb)
