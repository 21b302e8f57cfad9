"""Backends for one process: the default device, or every local GPU through MirroredStrategy."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    def __init__(self, cpu_devices: int = 0) -> None:
        devices = None
        if cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
            # Several replicas on one CPU run the multi-replica code paths (gradient sums, per-replica batches).
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        self.strategy = tf.distribute.MirroredStrategy(devices)

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
