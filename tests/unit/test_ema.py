"""Weight EMA (job/ema.py, docs/configuration.md "Recipes"): the averages follow the closed form step by step,
starting from the initial weights, and the loop swaps them in and out without touching the trained weights."""
from __future__ import annotations

import numpy as np

from job.builder import build_run
from job.config import load_config
from job.loop import Loop
from job.stopping import StopRequest

DECAY = 0.8


def test_the_averages_follow_the_closed_form_from_the_initial_weights(tmp_path):
    cfg = load_config("digits_resnet20", ["model.name=simple_cnn", f"train.ema_decay={DECAY}", "train.batch_size=16",
                                          "train.max_steps_per_epoch=4", "optim.warmup_epochs=0", "train.epochs=1",
                                          f"run.dir={tmp_path / 'run'}", "run.progress=false"])
    parts = build_run(cfg, writers=False)
    parts.restore_or_initialize()
    ema = parts.ema
    seen = [[v.numpy().copy() for v in ema.weights]]  # w_0
    for average, weight in zip(ema.averages, seen[0]):
        np.testing.assert_array_equal(average.numpy(), weight)  # averaged_0 = the initial weights
    loop = Loop(parts, [], StopRequest())

    def recording(step_fn):
        def call(*args):
            out = step_fn(*args)
            seen.append([v.numpy().copy() for v in ema.weights])  # w_t, after the step
            return out
        return call

    loop.instrument_step(recording)
    loop.run_epoch(0)
    steps = len(seen) - 1
    assert steps == 4
    for i, average in enumerate(ema.averages):
        closed = DECAY ** steps * seen[0][i] + sum((1 - DECAY) * DECAY ** (steps - t) * seen[t][i]
                                                    for t in range(1, steps + 1))
        np.testing.assert_allclose(average.numpy(), closed, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a.numpy(), w) for a, w in zip(ema.averages, seen[-1])), "the average lags the weights"

    trained = [v.numpy().copy() for v in ema.weights + ema.statistics]
    with ema.swapped():
        for average, variable in zip(ema.averages, ema.weights):
            np.testing.assert_array_equal(variable.numpy(), average.numpy())
    for value, variable in zip(trained, ema.weights + ema.statistics):
        np.testing.assert_array_equal(variable.numpy(), value)  # the trained weights are back, untouched
    parts.run.close(10)
