"""The small interface the training loop uses to run on one device, all local GPUs, many workers or Horovod.

Loss convention shared by every backend: each replica computes `sum(per_example_loss) / global_batch_size`, so the
gradient of the whole step is the SUM of the replicas' gradients. tf.distribute strategies sum them inside
`optimizer.apply_gradients`; Horovod sums them in `reduce_gradients`. The loop never needs to know which.
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tensorflow as tf


@dataclass(frozen=True)
class Shard:
    """Which part of the data one input pipeline reads, and the batch it produces."""

    num_shards: int  # input pipelines in the whole job (one per worker process)
    index: int  # this pipeline's position, 0-based
    batch_size: int  # examples per batch this pipeline produces


class Backend(abc.ABC):
    name: str = "?"

    @property
    @abc.abstractmethod
    def num_replicas(self) -> int:
        """Replicas in the whole job (devices that each run the step on their own part of the global batch)."""

    @property
    def num_workers(self) -> int:
        return 1

    @property
    def worker_index(self) -> int:
        return 0

    @property
    def is_chief(self) -> bool:
        """Only the chief writes checkpoints, summaries and evaluation files."""
        return self.worker_index == 0

    def scope(self) -> contextlib.AbstractContextManager:
        """Variables (model, optimizer) must be created inside this."""
        return contextlib.nullcontext()

    def shard(self, global_batch_size: int) -> Shard:
        """How this worker's input pipeline is sharded and batched, for a global batch."""
        return Shard(num_shards=self.num_workers, index=self.worker_index,
                     batch_size=global_batch_size // self.num_workers)

    def distribute_dataset(self, dataset_fn: Callable[[Shard], tf.data.Dataset],
                           global_batch_size: int) -> Any:
        """An iterable of per-step batches, as `run_step` takes them."""
        return dataset_fn(self.shard(global_batch_size))

    def run_step(self, replica_fn: Callable[[Any], dict[str, tf.Tensor]], batch: Any) -> dict[str, tf.Tensor]:
        """Run `replica_fn(batch)` on every replica (inside a tf.function) and SUM its outputs over all replicas."""
        return replica_fn(batch)

    def reduce_gradients(self, grads: list[tf.Tensor]) -> list[tf.Tensor]:
        """Sum of the gradients over replicas that `apply_gradients` does not do by itself."""
        return grads

    def global_norm(self, grads: list[tf.Tensor]) -> tf.Tensor:
        """Norm of the gradient summed over all replicas (for clipping), called in the replica step after
        `reduce_gradients`. Inside a tf.distribute strategy the replicas still hold their own parts, so they are summed
        here; Keras' own clipnorm would clip each replica's part before the sum, which is not the global norm."""
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return tf.linalg.global_norm(grads)

    def sum_in_step(self, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        """Inside `run_step`'s replica function: each tensor summed over every replica of the job (synchronised batch
        statistics: job/precise_bn.py)."""
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tensors)
        return list(tensors)

    def broadcast_initial_state(self, variables: list[tf.Variable]) -> None:
        """Make every worker start from the chief's values (after build or restore)."""

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum of host-side numbers over all workers (evaluation counts, metrics); identity on one worker."""
        return values

    def barrier(self) -> None:
        """Wait for every worker. Every worker must call it the same number of times."""

    def shutdown(self) -> None:
        """Release collectives; called once at the end of the job."""
