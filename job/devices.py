"""The fast defaults for the device at hand: `train.precision=auto`, `train.jit_compile=auto` and
`train.steps_per_call=0` (auto).

On a GPU: bfloat16 mixed precision where the GPU computes it natively (compute capability 8.0 and newer: A100, L4,
H100, RTX 30xx/40xx), float16 with loss scaling before that (Volta and Turing have float16 tensor cores, no bfloat16),
and XLA. On a CPU: float32 and no XLA; this machine measured XLA at 2x the CPU time per image (docs/performance.md),
and CPUs gain nothing from float16. Steps per call: 8 on a GPU, where the host's 0.7-0.8 ms between steps would be
15-40 % of a 2-5 ms step (0.02 ms at 8 per call); 1 on a CPU, where 8 measured the same speed (docs/performance.md).
An explicit value is always kept as it is.
"""
from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger("job")

AUTO = "auto"
GPU_STEPS_PER_CALL = 8
BF16_FROM_CAPABILITY = (8, 0)
FP16_FROM_CAPABILITY = (7, 0)


def gpu_capabilities() -> list[tuple[int, int]]:
    """The compute capability of every visible GPU (empty on a CPU-only machine)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def choose(precision: str, jit_compile, capabilities: list[tuple[int, int]], steps_per_call: int = 1
           ) -> tuple[str, bool, int]:
    """(precision, jit_compile, steps_per_call) with `auto` (0 for steps) resolved for GPUs of these capabilities
    (the slowest decides)."""
    slowest = min(capabilities) if capabilities else None
    if precision == AUTO:
        precision = ("float32" if slowest is None or slowest < FP16_FROM_CAPABILITY else
                     "mixed_bfloat16" if slowest >= BF16_FROM_CAPABILITY else "mixed_float16")
    if jit_compile == AUTO:
        jit_compile = slowest is not None
    if not steps_per_call:
        steps_per_call = GPU_STEPS_PER_CALL if slowest is not None else 1
    return precision, bool(jit_compile), steps_per_call


def resolve(cfg):
    """`cfg` with train.precision and train.jit_compile as they will be used here; the choice is logged."""
    capabilities = gpu_capabilities()
    train = cfg.train
    precision, jit, steps = choose(train.precision, train.jit_compile, capabilities, train.steps_per_call)
    if (train.precision, train.jit_compile, train.steps_per_call) != (precision, jit, steps):
        device = (f"{len(capabilities)} GPU(s), compute capability {'.'.join(map(str, min(capabilities)))}"
                  if capabilities else "no GPU")
        log.info("precision %s, XLA %s, %d step(s) per call (chosen for %s; set train.precision, train.jit_compile "
                 "and train.steps_per_call to override)", precision, "on" if jit else "off", steps, device)
    return dataclasses.replace(cfg, train=dataclasses.replace(train, precision=precision, jit_compile=jit,
                                                              steps_per_call=steps))
