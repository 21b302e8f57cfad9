"""The input pipeline alone: job.data.train_dataset (shuffled, augmented CIFAR-shaped batches) drained as fast as
possible, on one thread and on all cores.

"One thread" is tf.data's private thread pool of size 1 with intra-op parallelism 1, so the map function, its ops
and the prefetch all share one core; "all cores" is the pipeline exactly as the trainer builds it. A trial is one
pass over the data; the rate is taken from the first batch on, so building the dataset (converting the image array
to a tensor) is reported separately as epoch_setup_seconds. Both the wall-clock rate and the rate per CPU-second of
the process are recorded.
"""
from __future__ import annotations

import dataclasses
import time

from bench.worker import Sides


def setup_pipeline(preset: str, overrides: list[str]) -> Sides:
    import tensorflow as tf

    from job import data as datalib
    from job.config import load_config
    from job.distribute.base import Shard

    cfg = load_config(preset, ["data.name=synthetic", "data.validation_split=0", *overrides])
    splits = datalib.load_splits(cfg.data, cfg.train.seed)
    shard = Shard(num_shards=1, index=0, batch_size=cfg.train.batch_size)
    one_thread = tf.data.Options()
    one_thread.threading.private_threadpool_size = 1
    one_thread.threading.max_intra_op_parallelism = 1
    epochs = iter(range(1_000_000))  # every trial sees a new epoch: a new order and new augmentations

    def drain(options: tf.data.Options | None) -> dict:
        began = time.perf_counter()
        dataset = datalib.train_dataset(splits.x_train, splits.y_train, cfg.data, shard, seed=cfg.train.seed,
                                        epoch=next(epochs))
        if options is not None:
            dataset = dataset.with_options(options)
        iterator = iter(dataset)
        next(iterator)
        first, cpu = time.perf_counter(), time.process_time()
        images = shard.batch_size * sum(1 for _ in iterator)
        seconds, cpu_seconds = time.perf_counter() - first, time.process_time() - cpu
        # images per CPU-second of the whole process (pipeline threads and the consumer): the rate per core, which
        # other processes on a shared machine do not change the way they change the wall clock
        return {"images_per_second": images / seconds, "images_per_cpu_second": images / cpu_seconds,
                "batches": images // shard.batch_size + 1, "epoch_setup_seconds": first - began}

    info = {"examples": len(splits.x_train), "batch_size": shard.batch_size,
            "augment": dataclasses.asdict(cfg.data.augment)}
    return Sides(trials={"1 thread": lambda: drain(one_thread), "all cores": lambda: drain(None)}, info=info)
