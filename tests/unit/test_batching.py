"""Batch planning (job/batching.py): how the global batch is split over replicas and micro-batches, and the
one-line refusals."""
import pytest

from job.batching import plan_batches
from job.config import load_config
from job.errors import ConfigError


def plan(workers: int, replicas: int, *overrides: str):
    return plan_batches(load_config("digits_resnet20", ["train.batch_size=128", *overrides]), workers, replicas)


@pytest.mark.parametrize("workers, replicas, accumulation, device", [
    (1, 1, 1, 128), (2, 2, 1, 64), (2, 4, 1, 32), (4, 8, 1, 16),
])
def test_without_a_limit_each_replica_takes_its_share_in_one_pass(workers, replicas, accumulation, device):
    p = plan(workers, replicas)
    assert (p.accumulation, p.device_batch) == (accumulation, device)
    assert p.record() == {"workers": workers, "replicas": replicas, "accumulation_steps": accumulation,
                          "device_batch": device}
    assert p.describe() == (f"global batch 128 = {replicas} replica(s) on {workers} worker(s) x {accumulation} "
                            f"accumulation step(s) x {device} per device")


@pytest.mark.parametrize("replicas, limit, accumulation", [(1, 64, 2), (1, 50, 4), (2, 16, 4), (1, 128, 1), (4, 5, 8)])
def test_a_device_limit_takes_the_fewest_micro_batches_that_fit(replicas, limit, accumulation):
    p = plan(1, replicas, f"train.max_device_batch={limit}")
    assert p.accumulation == accumulation and p.device_batch <= limit
    assert p.device_batch * p.accumulation * replicas == 128


def test_explicit_accumulation_is_taken_as_given():
    assert plan(1, 2, "train.accumulation_steps=4").device_batch == 16


@pytest.mark.parametrize("overrides, fragment", [
    (["train.accumulation_steps=3"], "train.accumulation_steps=3 does not divide the 64 examples"),
    (["train.accumulation_steps=2", "train.max_device_batch=16"], "leaves 32 examples per device, over "
                                                                  "train.max_device_batch=16"),
])
def test_what_cannot_be_split_is_refused_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        plan(1, 2, *overrides)
    assert "\n" not in str(error.value)


def test_a_share_with_no_divisor_under_the_limit_goes_down_to_single_examples():
    # 7 examples per replica (a prime) under a limit of 3: seven micro-batches of one
    p = plan_batches(load_config("digits_resnet20", ["train.batch_size=14", "train.max_device_batch=3"]), 1, 2)
    assert (p.accumulation, p.device_batch) == (7, 1)
