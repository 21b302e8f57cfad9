"""One process per device with Horovod (launched by horovodrun/mpirun), gradients summed by a gloo/NCCL allreduce.

Horovod's Keras integration (DistributedOptimizer, callbacks) and `hvd.DistributedGradientTape` /
`hvd.broadcast_variables(model.variables)` do not work with Keras 3 variables, so this backend uses only the raw
collectives: `grouped_allreduce` on the gradient list and a broadcast of the tf.Variables under the Keras variables.
"""
from __future__ import annotations

import math
import os
from typing import Any

import tensorflow as tf

from job.config import DistributeConfig
from job.distribute.base import Backend


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, cfg: DistributeConfig) -> None:
        # gloo reads it at init for rendezvous and as the timeout of every collective: a dead peer then fails the
        # survivors after this long instead of hanging. The config is the one place to set it (overrides horovodrun's).
        os.environ["HOROVOD_GLOO_TIMEOUT_SECONDS"] = str(max(1, math.ceil(cfg.collective_timeout_seconds)))
        import horovod.tensorflow as hvd

        self.hvd = hvd
        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # one GPU per process; must happen before TensorFlow initialises its devices
            tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
            tf.config.experimental.set_memory_growth(gpus[hvd.local_rank() % len(gpus)], True)
        self._host_reductions = 0

    @property
    def num_replicas(self) -> int:
        return self.hvd.size()

    @property
    def num_workers(self) -> int:
        return self.hvd.size()  # one input pipeline per process

    @property
    def worker_index(self) -> int:
        return self.hvd.rank()

    def run_step(self, replica_fn, batch) -> dict[str, tf.Tensor]:
        # One replica per process: the gradient allreduce happens inside replica_fn (reduce_gradients); only the
        # step's outputs (loss, counts) still need summing so every rank reports the whole job's numbers.
        outputs = replica_fn(batch)
        return {k: self.hvd.allreduce(v, op=self.hvd.Sum, name=f"run_step_{k}") for k, v in outputs.items()}

    def reduce_gradients(self, grads: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
        present = [i for i, g in enumerate(grads) if g is not None]
        dense = [tf.convert_to_tensor(grads[i]) for i in present]  # IndexedSlices -> dense: allreduce needs dense
        if not dense:
            return list(grads)
        # Each replica's loss is divided by the GLOBAL batch (base.py), so the step's gradient is the SUM.
        reduced = self.hvd.grouped_allreduce(dense, op=self.hvd.Sum)
        out = list(grads)
        for i, g in zip(present, reduced):
            out[i] = g
        return out

    def broadcast_initial_state(self, variables: list[Any]) -> None:
        self.hvd.broadcast_variables([_as_tf_variable(v) for v in variables], root_rank=0)

    def sum_in_step(self, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        return list(self.hvd.grouped_allreduce(list(tensors), op=self.hvd.Sum))

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        if not values:
            return {}
        keys = sorted(values)  # the same order on every rank
        self._host_reductions += 1  # ranks match collectives by name: every rank counts the same calls
        total = self.hvd.allreduce(
            tf.constant([float(values[k]) for k in keys], dtype=tf.float64),
            op=self.hvd.Sum, name=f"all_reduce_sum_{self._host_reductions}",
        ).numpy()
        return {k: float(v) for k, v in zip(keys, total)}

    def barrier(self) -> None:
        self.all_reduce_sum({"barrier": 0.0})

    def shutdown(self) -> None:
        self.hvd.shutdown()


def _as_tf_variable(variable: Any) -> tf.Variable:
    """The tf.Variable holding a Keras 3 variable's value (Horovod can only assign to real tf.Variables)."""
    if isinstance(variable, tf.Variable):
        return variable
    value = getattr(variable, "value", None)
    if isinstance(value, tf.Variable):
        return value
    raise TypeError(f"cannot broadcast {variable!r}: it is neither a tf.Variable nor a Keras variable backed by one")
