"""The fast defaults for the device at hand: `train.precision=auto` and `train.jit_compile=auto`.

On a GPU: bfloat16 mixed precision where the GPU computes it natively (compute capability 8.0 and newer: A100, L4,
H100, RTX 30xx/40xx), float16 with loss scaling before that (Volta and Turing have float16 tensor cores, no bfloat16),
and XLA. On a CPU: float32 and no XLA; this machine measured XLA at 2x the CPU time per image (docs/performance.md),
and CPUs gain nothing from float16. An explicit value is always kept as it is.
"""
from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger("job")

AUTO = "auto"
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


def choose(precision: str, jit_compile, capabilities: list[tuple[int, int]]) -> tuple[str, bool]:
    """(precision, jit_compile) with `auto` resolved for GPUs of these capabilities (the slowest decides)."""
    slowest = min(capabilities) if capabilities else None
    if precision == AUTO:
        precision = ("float32" if slowest is None or slowest < FP16_FROM_CAPABILITY else
                     "mixed_bfloat16" if slowest >= BF16_FROM_CAPABILITY else "mixed_float16")
    if jit_compile == AUTO:
        jit_compile = slowest is not None
    return precision, bool(jit_compile)


def resolve(cfg):
    """`cfg` with train.precision and train.jit_compile as they will be used here; the choice is logged."""
    capabilities = gpu_capabilities()
    precision, jit = choose(cfg.train.precision, cfg.train.jit_compile, capabilities)
    if (cfg.train.precision, cfg.train.jit_compile) != (precision, jit):
        device = (f"{len(capabilities)} GPU(s), compute capability {'.'.join(map(str, min(capabilities)))}"
                  if capabilities else "no GPU")
        log.info("precision %s, XLA %s (chosen for %s; set train.precision and train.jit_compile to override)",
                 precision, "on" if jit else "off", device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision, jit_compile=jit))
