"""Distribution backends behind one interface (base.Backend). `make_backend` picks one from the config."""
from __future__ import annotations

import os

from job.config import Config
from job.distribute.base import Backend, Shard
from job.distribute.versions import check_versions
from job.errors import ConfigError

__all__ = ["Backend", "Shard", "make_backend"]


def make_backend(cfg: Config) -> Backend:
    name = cfg.distribute.backend
    if name == "auto":
        name = _detect()
    check_versions(name)  # a wrong TF/Keras/Horovod combination fails obscurely inside a collective otherwise
    if name == "single":
        from job.distribute.local import SingleDeviceBackend

        backend: Backend = SingleDeviceBackend()
    elif name == "mirrored":
        from job.distribute.local import MirroredBackend

        backend = MirroredBackend(cfg.distribute.cpu_devices)
    elif name == "multiworker":
        from job.distribute.multiworker import MultiWorkerBackend

        backend = MultiWorkerBackend(cfg.distribute)
    elif name == "horovod":
        from job.distribute.horovod import HorovodBackend

        backend = HorovodBackend(cfg.distribute)
    else:
        raise ConfigError(f"distribute.backend={name!r} is unknown")
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
