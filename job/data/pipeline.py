"""tf.data input pipelines: an epoch of sharded, shuffled, augmented training batches, and plain evaluation batches.

The order of an epoch is a numpy permutation derived from (seed, epoch), cut into global batches; worker i of k takes
the i-th slice of every global batch, so k workers together see exactly the batches one worker with the same global
batch would, each example once per epoch (the remainder that does not fill a global batch is dropped). Augmentation is
keyed on (seed, epoch, batch index), so `skip_batches=k` yields exactly what the full epoch yields after its
first k batches: a run resumed mid-epoch continues with the same images an uninterrupted run would have seen.
The random numbers of a global batch are drawn whole and each worker keeps its slice, so the images of a step do not
depend on how many workers share it: a run resumes on another number of workers with the same data.

With data.mix on (job/data/mix.py), example p of a global batch of G is mixed with example G-1-p: each worker
also gathers and augments its partners (the mirrored part of the global batch, augmented as that part), so the mixed
batch too is the same on any number of workers, and labels are soft (float32, one column per class).

The image array is converted to one tensor that the map function captures and gathers from, rather than being sliced
into the dataset graph element by element. There is no shuffle buffer to size: the permutation is a full shuffle.
A streamed folder dataset (job/data/shards.py ShardedImages, docs/own-images.md) is gathered instead by reading the
same indices' rows from its shard files: the same uint8 images go into the same augmentation, so its batches are
those of the in-memory pipeline, bit for bit.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from job.config import DataConfig
from job.data.augment import augment_batch
from job.data.mix import mix_batch
from job.data.shards import ShardedImages
from job.distribute.base import Shard
from job.errors import ConfigError

# tf.data's default graph rewrites serialize the pipeline, captured image tensor included (~0.6 s per epoch for
# CIFAR); this pipeline is already parallel and prefetched, so they have nothing to add.
_OPTIONS = tf.data.Options()
_OPTIONS.experimental_optimization.apply_default_optimizations = False
# No autotuning: its thread sleeps between rounds (the pause doubles up to 60 s), and an iterator dropped before its
# input ends, as on a SIGTERM mid-epoch, waits for that thread to wake: the preemption checkpoint waited up to a
# minute (10-13 s measured 12-30 s into a CIFAR-sized epoch; 1.2 s without). Fixed settings lose nothing here: a core
# makes 50,000-100,000 augmented images a second (docs/performance.md), so one batch in flight per core, at most 8
# (several ranks share a host), outruns any GPU on CIFAR; two batches wait ready.
_OPTIONS.autotune.enabled = False
_PARALLEL_BATCHES = min(8, len(os.sched_getaffinity(0)))
_PREFETCH_BATCHES = 2
_MIX_STREAM = 0x313C


def steps_per_epoch(num_train: int, global_batch_size: int) -> int:
    steps = num_train // global_batch_size
    if steps <= 0:
        raise ConfigError(
            f"the global batch of {global_batch_size} is larger than the {num_train} training examples; "
            f"lower train.batch_size"
        )
    return steps


def epoch_batch_indices(num_examples: int, shard: Shard, seed: int, epoch: int) -> np.ndarray:
    """int32 (steps, shard.batch_size): the example indices of this worker's batches in `epoch`."""
    per_step = _global_batches(num_examples, shard, seed, epoch)
    lo = shard.index * shard.batch_size
    return np.ascontiguousarray(per_step[:, lo:lo + shard.batch_size], dtype=np.int32)


def partner_batch_indices(num_examples: int, shard: Shard, seed: int, epoch: int) -> np.ndarray:
    """int32 (steps, shard.batch_size): the indices of the global batch's positions G-B-lo .. G-1-lo in order (the
    part mirroring this worker's positions lo .. lo+B-1; reversed, they are its mixing partners)."""
    per_step = _global_batches(num_examples, shard, seed, epoch)
    start = per_step.shape[1] - (shard.index + 1) * shard.batch_size
    return np.ascontiguousarray(per_step[:, start:start + shard.batch_size], dtype=np.int32)


def _global_batches(num_examples: int, shard: Shard, seed: int, epoch: int) -> np.ndarray:
    global_batch = shard.batch_size * shard.num_shards
    steps = steps_per_epoch(num_examples, global_batch)
    order = np.random.default_rng(_entropy(seed, epoch)).permutation(num_examples)
    return order[: steps * global_batch].reshape(steps, global_batch)


def as_images(x):
    """What the pipelines gather from: an array as one tensor (convert it once per run, not per epoch), streamed
    images as they are."""
    return x if isinstance(x, ShardedImages) else tf.constant(x)


def _gatherer(x):
    """gather(ids) -> the uint8 images at positions `ids` of `x` (an array, a tensor, or ShardedImages)."""
    if isinstance(x, ShardedImages):
        shape = x.shape[1:]

        def read(ids: tf.Tensor) -> tf.Tensor:
            images = tf.numpy_function(x.take, [ids], tf.uint8)
            images.set_shape([ids.shape[0], *shape])
            return images

        return read
    images = tf.constant(x)
    return lambda ids: tf.gather(images, ids)


def train_dataset(x: np.ndarray, y: np.ndarray, cfg: DataConfig, shard: Shard, seed: int, epoch: int,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """(float32 images in [0, 255] after augmentation, int32 labels) batches of shard.batch_size, one epoch; with
    data.mix on, the images mixed and the labels float32 (batch, classes) soft labels."""
    batches = epoch_batch_indices(len(x), shard, seed, epoch)
    if not 0 <= skip_batches <= len(batches):
        raise ValueError(f"skip_batches={skip_batches} is outside the epoch's {len(batches)} batches")
    gather, labels = _gatherer(x), tf.constant(y, tf.int32)
    batch_ids = tf.constant(batches)
    # One key per global batch, whatever the number of workers: each draws the global batch's random numbers and
    # keeps its part, so the run can resume on another number of workers with the same images.
    epoch_key = tf.constant(np.random.SeedSequence(_entropy(seed, epoch, 0)).generate_state(2, np.uint32)
                            .astype(np.int64))
    augment = cfg.augment
    part = (shard.index * shard.batch_size, shard.batch_size * shard.num_shards)

    def load(step: tf.Tensor):
        ids = batch_ids[step]
        key = tf.random.experimental.stateless_fold_in(epoch_key, step)
        return augment_batch(gather(ids), key, augment, part), tf.gather(labels, ids)

    if cfg.mix.enabled:
        load = _mixing(load, gather, labels, cfg, shard, partner_batch_indices(len(x), shard, seed, epoch), epoch_key)

    dataset = tf.data.Dataset.range(skip_batches, len(batches))
    dataset = dataset.map(load, num_parallel_calls=_PARALLEL_BATCHES, deterministic=True)
    return dataset.prefetch(_PREFETCH_BATCHES).with_options(_OPTIONS)


def calibration_dataset(x: np.ndarray, shard: Shard, seed: int, epoch: int, batches: int) -> tf.data.Dataset:
    """`batches` global batches of training images for BatchNorm recalibration (job/precise_bn.py), this worker's
    slice of each: unaugmented float32 images and their labels, the examples a pure function of (seed, epoch) and
    drawn apart from the epoch's own order. Fewer batches when the training set holds fewer."""
    global_batch = shard.batch_size * shard.num_shards
    batches = max(1, min(batches, len(x) // global_batch))
    order = np.random.default_rng(_entropy(seed, epoch, 0xB4)).permutation(len(x))[: batches * global_batch]
    ids = order.reshape(batches, shard.num_shards, shard.batch_size)[:, shard.index, :]
    gather = _gatherer(x)

    def load(step: tf.Tensor):
        taken = gather(tf.constant(np.ascontiguousarray(ids, np.int32))[step])
        return tf.cast(taken, tf.float32), tf.zeros([shard.batch_size], tf.int32)

    dataset = tf.data.Dataset.range(batches).map(load, num_parallel_calls=_PARALLEL_BATCHES, deterministic=True)
    return dataset.prefetch(_PREFETCH_BATCHES).with_options(_OPTIONS)


def _mixing(load, gather, labels, cfg: DataConfig, shard: Shard, partners: np.ndarray, epoch_key):
    """`load` followed by mixup/CutMix with the mirrored part of the global batch, augmented as that part."""
    from job.data.splits import DATASETS

    num_classes = DATASETS[cfg.name].num_classes[cfg.label_mode]
    total = shard.batch_size * shard.num_shards
    partner_part = (total - (shard.index + 1) * shard.batch_size, total)
    partner_ids = tf.constant(partners)

    def load_and_mix(step: tf.Tensor):
        own_images, own_labels = load(step)
        key = tf.random.experimental.stateless_fold_in(epoch_key, step)
        if shard.num_shards == 1:  # the partners are the batch itself, reversed
            other_images, other_labels = own_images[::-1], own_labels[::-1]
        else:
            ids = partner_ids[step]
            other_images = augment_batch(gather(ids), key, cfg.augment, partner_part)[::-1]
            other_labels = tf.gather(labels, ids)[::-1]
        # a key of its own (folded from the batch's), so a batch's augmentation is the same with mixing on or off
        mix_key = tf.random.experimental.stateless_fold_in(key, _MIX_STREAM)
        return mix_batch(own_images, own_labels, other_images, other_labels, mix_key, cfg.mix, num_classes)

    return load_and_mix


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shard: Shard | None = None) -> tf.data.Dataset:
    """(float32 images in [0, 255], int32 labels) in order, the last batch partial; a shard reads its contiguous
    part."""
    lo, hi = shard_range(len(x), shard)
    n = hi - lo
    labels = tf.constant(y[lo:hi], tf.int32)
    if isinstance(x, ShardedImages):
        gather = _gatherer(x)
        sliced = lambda start, end: gather(tf.range(start, end) + lo)  # noqa: E731
    else:
        images = tf.constant(x[lo:hi])
        sliced = lambda start, end: images[start:end]  # noqa: E731

    def load(batch: tf.Tensor):
        start = tf.cast(batch, tf.int32) * batch_size
        end = tf.minimum(start + batch_size, n)
        return tf.cast(sliced(start, end), tf.float32), labels[start:end]

    dataset = tf.data.Dataset.range(-(-n // batch_size))
    dataset = dataset.map(load, num_parallel_calls=_PARALLEL_BATCHES, deterministic=True)
    return dataset.prefetch(_PREFETCH_BATCHES).with_options(_OPTIONS)


def shard_range(num_examples: int, shard: Shard | None) -> tuple[int, int]:
    """[lo, hi) of this shard's contiguous part; the parts differ in size by at most one example."""
    if shard is None or shard.num_shards == 1:
        return 0, num_examples
    base, extra = divmod(num_examples, shard.num_shards)
    lo = shard.index * base + min(shard.index, extra)
    return lo, lo + base + (shard.index < extra)


def _entropy(*values: int) -> list[int]:
    """Seed material for numpy (which refuses negative ints); a constant tags it as this module's."""
    return [0xDA7A] + [int(v) % 2**64 for v in values]
