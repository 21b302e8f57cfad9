"""How a step's global batch is split: over the job's replicas, then into micro-batches (gradient accumulation).

The global batch (train.batch_size) is the run's: the data order, the LR schedule, the step count and the checkpoint
are those of the global batch, whatever runs it. A run can therefore continue on another number of workers: the
global batch is split differently, and where one device's share no longer fits (train.max_device_batch) each replica
accumulates the gradients of several micro-batches before the one optimizer step. Every micro-batch's loss is divided
by the global batch, so the summed gradient is the gradient of the global batch, as one device taking it whole gets.

BatchNorm is the exception: it normalises each micro-batch (and each replica's share) by that part's own statistics,
and updates its moving averages once per micro-batch, as it does on a device that takes that many examples. Exact
equality across worker counts holds for models without BatchNorm (and without dropout, whose masks are drawn per
replica); with BatchNorm the run continues with the same data and optimizer but per-device batch statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

from job.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    workers: int
    replicas: int
    accumulation: int

    @property
    def device_batch(self) -> int:
        """Examples one device takes in one forward/backward pass."""
        return self.global_batch // (self.replicas * self.accumulation)

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.replicas} replica(s) on {self.workers} worker(s) x "
                f"{self.accumulation} accumulation step(s) x {self.device_batch} per device")

    def record(self) -> dict:
        return {"workers": self.workers, "replicas": self.replicas, "accumulation_steps": self.accumulation,
                "device_batch": self.device_batch}


def plan_batches(cfg, num_workers: int, num_replicas: int) -> BatchPlan:
    """train.accumulation_steps if given, else the fewest micro-batches that keep a device's share within
    train.max_device_batch; one line naming the fix when the global batch does not split evenly."""
    per_replica = cfg.train.batch_size // num_replicas
    wanted = cfg.train.accumulation_steps
    limit = cfg.train.max_device_batch
    if wanted:
        if per_replica % wanted:
            raise ConfigError(f"train.accumulation_steps={wanted} does not divide the {per_replica} examples each of "
                              f"the {num_replicas} replica(s) takes of train.batch_size={cfg.train.batch_size}; use a "
                              f"divisor of {per_replica}")
        accumulation = wanted
    else:
        accumulation = next((a for a in range(1, per_replica + 1) if not per_replica % a and per_replica // a <= limit),
                            None) if limit else 1
        if accumulation is None:
            raise ConfigError(f"train.max_device_batch={limit} cannot be met: {per_replica} examples per replica do "
                              "not split evenly into micro-batches that small; raise it or change train.batch_size")
    plan = BatchPlan(cfg.train.batch_size, num_workers, num_replicas, accumulation)
    if limit and plan.device_batch > limit:
        raise ConfigError(f"train.accumulation_steps={wanted} leaves {plan.device_batch} examples per device, over "
                          f"train.max_device_batch={limit}; raise accumulation_steps or leave it 0 (automatic)")
    return plan
