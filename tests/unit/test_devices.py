"""train.precision=auto and train.jit_compile=auto (job/devices.py): the fast choice for the GPU at hand, float32
without XLA on a CPU; the choice is logged and stored with the run."""
from __future__ import annotations

import pytest

from job.devices import choose


@pytest.mark.parametrize("capabilities, expected", [
    ([], ("float32", False, 1)),  # a CPU: XLA measured at 2x the CPU time per image here, no fast 16-bit math
    ([(6, 1)], ("float32", True, 8)),  # Pascal: no tensor cores
    ([(7, 0)], ("mixed_float16", True, 8)),  # Volta: float16 tensor cores, no bfloat16
    ([(7, 5)], ("mixed_float16", True, 8)),  # Turing (T4)
    ([(8, 0)], ("mixed_bfloat16", True, 8)),  # Ampere (A100)
    ([(8, 9)], ("mixed_bfloat16", True, 8)),  # Ada (L4)
    ([(9, 0), (7, 5)], ("mixed_float16", True, 8)),  # mixed GPUs: the slowest decides
])
def test_auto_picks_the_fast_settings_for_the_device(capabilities, expected):
    assert choose("auto", "auto", capabilities, 0) == expected


def test_an_explicit_setting_is_kept():
    assert choose("float32", False, [(8, 0)], 2) == ("float32", False, 2)
    assert choose("mixed_float16", True, [], 4) == ("mixed_float16", True, 4)


def test_a_bad_jit_compile_value_is_one_line():
    from job.config import load_config
    from job.errors import ConfigError

    with pytest.raises(ConfigError, match="train.jit_compile='sometimes' is not one of auto, true, false"):
        load_config("digits_resnet20", ["train.jit_compile=sometimes"])
    assert load_config("digits_resnet20", ["train.jit_compile=true"]).train.jit_compile is True
