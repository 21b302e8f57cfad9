"""Distribution backends behind one interface (base.Backend), in a registry (BACKENDS). `make_backend` picks one from
the config.

Importing this package does not import TensorFlow: config validation reads BACKENDS before TensorFlow starts. A
backend's module (and `Backend`, `Shard` from base.py) is imported when it is used.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from job.distribute.versions import check_versions
from job.errors import ConfigError

if TYPE_CHECKING:
    from job.config import Config, DistributeConfig
    from job.distribute.base import Backend

__all__ = ["BACKENDS", "Backend", "BackendSpec", "Shard", "make_backend"]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    make: Callable[[DistributeConfig], Backend]  # make(cfg.distribute), inside the process that trains


def _single(cfg: DistributeConfig) -> Backend:
    from job.distribute.local import SingleDeviceBackend

    return SingleDeviceBackend()


def _mirrored(cfg: DistributeConfig) -> Backend:
    from job.distribute.local import MirroredBackend

    return MirroredBackend(cfg.cpu_devices)


def _multiworker(cfg: DistributeConfig) -> Backend:
    from job.distribute.multiworker import MultiWorkerBackend

    return MultiWorkerBackend(cfg)


def _horovod(cfg: DistributeConfig) -> Backend:
    from job.distribute.horovod import HorovodBackend

    return HorovodBackend(cfg)


_SPECS = [
    BackendSpec("single", "one device: the GPU, or the CPU", _single),
    BackendSpec("mirrored", "every GPU of this machine (MirroredStrategy); distribute.cpu_devices splits a CPU",
                _mirrored),
    BackendSpec("multiworker", "one process per node (MultiWorkerMirroredStrategy; TF_CONFIG or an indexed Job)",
                _multiworker),
    BackendSpec("horovod", "one process per GPU under horovodrun or mpirun (gradient allreduce)", _horovod),
]

BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in _SPECS}
AUTO = "auto"  # distribute.backend's default: _detect() picks one of BACKENDS at start


def make_backend(cfg: Config) -> Backend:
    name = cfg.distribute.backend
    if name == AUTO:
        name = _detect()
    if name not in BACKENDS:
        raise ConfigError(f"distribute.backend={name!r} is unknown; use {AUTO}, {', '.join(BACKENDS)}")
    check_versions(name)  # a wrong TF/Keras/Horovod combination fails obscurely inside a collective otherwise
    backend = BACKENDS[name].make(cfg.distribute)
    if cfg.train.batch_size % backend.num_replicas:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by the {backend.num_replicas} replicas of the "
            f"{backend.name} backend; use a multiple of {backend.num_replicas}"
        )
    return backend


def _detect() -> str:
    """Horovod when launched by horovodrun/mpirun, multiworker with TF_CONFIG or an indexed Job, else local."""
    if any(k in os.environ for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")):
        return "horovod"
    if "TF_CONFIG" in os.environ or "JOB_COMPLETION_INDEX" in os.environ and "WORKER_HOSTS" in os.environ:
        return "multiworker"
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "single"


def __getattr__(name: str) -> Any:
    if name in ("Backend", "Shard"):  # base.py imports TensorFlow
        return getattr(importlib.import_module("job.distribute.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
