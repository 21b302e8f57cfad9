"""Backends for one process: the default device, or every local GPU through MirroredStrategy."""
from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from job.distribute.base import Backend, Shard


class SingleDeviceBackend(Backend):
    name = "single"

    @property
    def num_replicas(self) -> int:
        return 1


class MirroredBackend(Backend):
    """All GPUs of this machine (or the CPU when there is none). Gradients are summed in `apply_gradients`."""

    name = "mirrored"

    def __init__(self) -> None:
        self.strategy = tf.distribute.MirroredStrategy()

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def distribute_dataset(self, dataset_fn: Callable[[Shard], tf.data.Dataset], global_batch_size: int) -> Any:
        # One input pipeline producing the global batch; the strategy splits it over the replicas.
        dataset = dataset_fn(Shard(num_shards=1, index=0, batch_size=global_batch_size))
        return self.strategy.experimental_distribute_dataset(dataset)

    def run_step(self, replica_fn, batch):
        per_replica = self.strategy.run(replica_fn, args=(batch,))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
