"""train.precision=auto and train.jit_compile=auto (job/devices.py) in a real run: the effective choice is logged and
stored with the run (the choice itself: tests/unit/test_devices.py)."""
from __future__ import annotations

import json

import yaml


def test_a_run_stores_and_records_the_effective_choice(digits_run):
    """The digits run trained with the defaults (auto) on this CPU: float32, no XLA, in its config and its history."""
    stored = yaml.safe_load((digits_run / "config.yaml").read_text())["train"]
    assert (stored["precision"], stored["jit_compile"], stored["steps_per_call"]) == ("float32", False, 1)
    start = json.loads((digits_run / "history.json").read_text())["starts"][0]
    assert (start["precision"], start["xla"]) == ("float32", False)
    log = next((digits_run / "logs" / "trainer").iterdir()).read_text()
    assert ("precision float32, XLA off, 1 step(s) per call (chosen for no GPU; set train.precision, "
            "train.jit_compile and train.steps_per_call to override)") in log
