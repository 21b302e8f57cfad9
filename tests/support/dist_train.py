"""A minimal custom training loop written only against job.distribute.base.Backend, for the distribute tests.

Trains a tiny dense model on fixed synthetic data (no shuffle, no augmentation, no dropout) and writes this worker's
weights after --steps steps, their losses, the example ids it read and an all_reduce_sum result to
OUT_DIR/worker-<i>.npz. With --until-peer-lost it then trains on, so a test can kill one worker and watch the other.
A lost peer ends the process with job.errors.EXIT_PEER_LOST.

    python -m tests.support.dist_train --backend {single,multiworker,horovod} --global-batch 8 --steps 4 --out DIR
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from job.config import DistributeConfig  # noqa: E402
from job.errors import EXIT_PEER_LOST  # noqa: E402

EXAMPLES, FEATURES, CLASSES = 32, 6, 3


def make_backend(name: str, timeout: float):
    cfg = DistributeConfig(backend=name, collective_timeout_seconds=timeout)
    if name == "single":
        from job.distribute.local import SingleDeviceBackend

        return SingleDeviceBackend()
    if name == "multiworker":
        from job.distribute.multiworker import MultiWorkerBackend

        return MultiWorkerBackend(cfg)
    from job.distribute.horovod import HorovodBackend

    return HorovodBackend(cfg)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="steps recorded in the saved result")
    p.add_argument("--until-peer-lost", action="store_true", help="after saving, train on until a collective fails")
    p.add_argument("--timeout", type=float, default=30.0, help="collective timeout seconds")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    backend = make_backend(args.backend, args.timeout)  # before any other TF op (MultiWorkerMirroredStrategy)
    import keras
    import tensorflow as tf

    from job.distribute.errors import is_peer_lost_error

    # A different seed per worker: identical final weights then prove that the backend synchronises the start.
    keras.utils.set_random_seed(1234 + backend.worker_index)
    rng = np.random.default_rng(7)
    features = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    labels = rng.integers(0, CLASSES, size=EXAMPLES).astype("int32")
    ids = np.arange(EXAMPLES, dtype="int64")

    def dataset_fn(shard):
        ds = tf.data.Dataset.from_tensor_slices((features, labels, ids))
        ds = ds.shard(shard.num_shards, shard.index).batch(shard.batch_size, drop_remainder=True)
        return ds.repeat() if args.until_peer_lost else ds

    with backend.scope():
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(CLASSES)])
        optimizer = keras.optimizers.SGD(learning_rate=0.5, momentum=0.9)
        optimizer.build(model.trainable_variables)
    backend.broadcast_initial_state(model.variables + optimizer.variables)

    global_batch = args.global_batch

    def replica_fn(batch):
        x, y, example_ids = batch
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.reduce_sum(per_example) / global_batch  # base.py convention: divide by the GLOBAL batch
        grads = backend.reduce_gradients(tape.gradient(loss, model.trainable_variables))
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss, "examples": tf.cast(tf.shape(example_ids)[0], tf.float32)}

    @tf.function
    def train_step(batch):
        return backend.run_step(replica_fn, batch)

    def save(totals: dict[str, float]) -> None:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"worker-{backend.worker_index}.npz")
        np.savez(
            path + ".partial.npz",
            *[np.asarray(w) for w in model.get_weights()],
            losses=np.array(losses), seen=np.array(seen, dtype="int64"),
            totals=np.array([totals["examples"], totals["one"]]),
            meta=np.array([backend.num_workers, backend.num_replicas, int(backend.is_chief)]),
        )
        os.replace(path + ".partial.npz", path)  # the test polls for it
        print(f"worker {backend.worker_index} saved", flush=True)

    losses, seen = [], []
    try:
        batches = iter(backend.distribute_dataset(dataset_fn, global_batch))
        for step in range(args.steps):
            batch = next(batches)
            out = train_step(batch)
            losses.append(float(out["loss"]))
            assert float(out["examples"]) == global_batch, out
            seen.extend(_local_ids(backend, batch))
            print(f"worker {backend.worker_index} step {step} loss {losses[-1]:.6f}", flush=True)
        save(backend.all_reduce_sum({"examples": float(len(seen)), "one": 1.0}))
        backend.barrier()
        step = args.steps
        while args.until_peer_lost:  # the data repeats; only a failing collective ends this
            out = train_step(next(batches))
            print(f"worker {backend.worker_index} step {step} loss {float(out['loss']):.6f}", flush=True)
            step += 1
    except Exception as e:  # noqa: BLE001 - classify, then re-raise anything that is not a lost peer
        if is_peer_lost_error(e):
            print(f"worker {backend.worker_index}: peer lost: {type(e).__name__}: {str(e)[-400:]}", flush=True)
            return EXIT_PEER_LOST
        raise
    backend.shutdown()
    return 0


def _local_ids(backend, batch) -> list[int]:
    """The example ids this worker's replicas read in one step (PerReplica values under tf.distribute)."""
    example_ids = batch[2]
    strategy = getattr(backend, "strategy", None)
    parts = strategy.experimental_local_results(example_ids) if strategy is not None else [example_ids]
    return [int(i) for part in parts for i in np.asarray(part)]


if __name__ == "__main__":
    sys.exit(main())
