"""Many worker processes (one per node) with tf.distribute.MultiWorkerMirroredStrategy.

The cluster comes from either
  - TF_CONFIG, TensorFlow's own JSON ({"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
    "index": i}}), as set by the Kubeflow TFJob operator or by hand; or
  - a Kubernetes Indexed Job: JOB_COMPLETION_INDEX (set by Kubernetes on every pod) plus WORKER_HOSTS, a
    comma-separated list of every worker's host:port in index order (the manifest writes it, e.g.
    "train-0.train:2222,train-1.train:2222" for pods named by a headless Service), so no operator is needed.
TF_CONFIG wins when both are set.

Each worker reads its own shard of the data (one input pipeline per worker); gradients are summed across all replicas
inside `optimizer.apply_gradients`. Every collective has a timeout (distribute.collective_timeout_seconds), so a dead
peer makes the survivors fail with a peer-lost error instead of hanging forever.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from job.config import DistributeConfig
from job.distribute.base import Backend, Shard
from job.errors import ConfigError


def tf_config_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """TF_CONFIG as a dict, parsed from TF_CONFIG or built from JOB_COMPLETION_INDEX + WORKER_HOSTS."""
    if env.get("TF_CONFIG"):
        try:
            tf_config = json.loads(env["TF_CONFIG"])
            workers = tf_config["cluster"].get("worker", []) + tf_config["cluster"].get("chief", [])
            task_type, task_index = tf_config["task"]["type"], int(tf_config["task"]["index"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"TF_CONFIG is not valid ({type(e).__name__}: {e}); it needs "
                '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'
            ) from None
        if not workers or task_type not in tf_config["cluster"]:
            raise ConfigError(f"TF_CONFIG names no workers or an unknown task type {task_type!r}; fix TF_CONFIG")
        if not 0 <= task_index < len(tf_config["cluster"][task_type]):
            raise ConfigError(f"TF_CONFIG task index {task_index} is outside its {task_type} list; fix TF_CONFIG")
        return tf_config
    if "JOB_COMPLETION_INDEX" in env and env.get("WORKER_HOSTS"):
        hosts = [h.strip() for h in env["WORKER_HOSTS"].split(",") if h.strip()]
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit():
                raise ConfigError(f"WORKER_HOSTS entry {host!r} is not host:port; write e.g. train-0.train:2222")
        try:
            index = int(env["JOB_COMPLETION_INDEX"])
        except ValueError:
            raise ConfigError(f"JOB_COMPLETION_INDEX={env['JOB_COMPLETION_INDEX']!r} is not an integer") from None
        if not 0 <= index < len(hosts):
            raise ConfigError(
                f"JOB_COMPLETION_INDEX={index} but WORKER_HOSTS lists {len(hosts)} workers; "
                "make the Job's completions/parallelism equal the number of WORKER_HOSTS"
            )
        return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    raise ConfigError(
        "the multiworker backend needs TF_CONFIG, or JOB_COMPLETION_INDEX and WORKER_HOSTS (host:port,host:port,...); "
        "set them or use distribute.backend=single"
    )


@contextlib.contextmanager
def _keeping_sigterm_handler():
    """Creating the strategy starts TF's coordination service, whose preemption notifier installs a C-level SIGTERM
    handler over Python's (measured with TF 2.21): the trainer would then never see SIGTERM, and a deleted pod would
    run on until SIGKILL instead of committing a checkpoint. Python still reports its own handler, so putting that one
    back restores it (TF's notifier only feeds PreemptionCheckpointHandler, which the trainer does not use)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            try:
                signal.signal(signal.SIGTERM, previous)
            except ValueError:
                pass


def worker_position(tf_config: Mapping[str, Any]) -> tuple[int, int]:
    """(index, count) of this process among all workers; a `chief` task, when present, is index 0."""
    cluster, task = tf_config["cluster"], tf_config["task"]
    chiefs = len(cluster.get("chief", []))
    count = chiefs + len(cluster.get("worker", []))
    index = int(task["index"]) + (chiefs if task["type"] == "worker" else 0)
    return index, count


class MultiWorkerBackend(Backend):
    name = "multiworker"

    def __init__(self, cfg: DistributeConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.tf_config = tf_config_from_env(env)
        self._worker_index, self._num_workers = worker_position(self.tf_config)
        cluster = tf.train.ClusterSpec(self.tf_config["cluster"])
        task = self.tf_config["task"]
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            cluster, task_type=task["type"], task_id=int(task["index"]), rpc_layer="grpc"
        )
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cfg.collective_timeout_seconds)
        with _keeping_sigterm_handler():
            # Must run before any other TensorFlow op: it starts this worker's gRPC server and configures collectives.
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=resolver, communication_options=options
            )

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def num_workers(self) -> int:
        return self._num_workers

    @property
    def worker_index(self) -> int:
        return self._worker_index

    @property
    def _local_replicas(self) -> int:
        return self.num_replicas // self.num_workers

    def scope(self):
        return self.strategy.scope()

    def distribute_dataset(self, dataset_fn: Callable[[Shard], tf.data.Dataset], global_batch_size: int) -> Any:
        per_replica_batch = global_batch_size // self.num_replicas

        def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            # dataset_fn makes this worker's batch of a step (global / workers); the strategy wants per-REPLICA
            # batches and hands a worker with k local replicas k consecutive ones per step, hence the rebatch.
            dataset = dataset_fn(Shard(num_shards=ctx.num_input_pipelines, index=ctx.input_pipeline_id,
                                       batch_size=global_batch_size // ctx.num_input_pipelines))
            if self._local_replicas > 1:
                dataset = dataset.rebatch(per_replica_batch, drop_remainder=True)
            return dataset

        return self.strategy.distribute_datasets_from_function(per_worker)

    def run_step(self, replica_fn, batch):
        per_replica = self.strategy.run(replica_fn, args=(batch,))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        if not values:
            return {}
        keys = sorted(values)  # the same order on every worker
        local = tf.constant([float(values[k]) for k in keys], dtype=tf.float64)
        zeros = tf.zeros_like(local)
        local_replicas = self._local_replicas

        # Only the first replica of each worker contributes, so each worker's numbers count once.
        def value_fn(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
            return local if ctx.replica_id_in_sync_group % local_replicas == 0 else zeros

        per_replica = self.strategy.experimental_distribute_values_from_function(value_fn)
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
        return {k: float(v) for k, v in zip(keys, total)}

    def barrier(self) -> None:
        self.all_reduce_sum({"barrier": 0.0})

    def broadcast_initial_state(self, variables: list[tf.Variable]) -> None:
        # Nothing to do: variables created in scope() take the chief's initial value (the strategy broadcasts it when
        # they are created), and a restore reads the same committed checkpoint on every worker.
        return None
