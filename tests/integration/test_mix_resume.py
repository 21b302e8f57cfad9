"""Exact resume with mixup and CutMix on: a run killed with kill -9 mid-epoch and resumed ends with the weights of an
uninterrupted run (docs/configuration.md "Recipes": mixing is drawn from (seed, epoch, batch) like the rest of
augmentation)."""
import numpy as np
import pytest

from tests.integration.test_train import TINY, final_variables
from tests.support.trainer_runs import committed_steps, kill_hard, run_job, start_job, trainer_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Both kinds in one run: switch_prob 0.5 alternates them, prob 0.8 leaves some batches unmixed; label smoothing too.
MIXED = [*TINY, "data.mix.mixup_alpha=0.4", "data.mix.cutmix_alpha=1.0", "data.mix.prob=0.8",
         "optim.label_smoothing=0.1"]


def test_kill_minus_nine_mid_epoch_with_mixing_then_resume_ends_with_the_same_weights(tmp_path):
    straight, resumed, log = tmp_path / "straight", tmp_path / "resumed", tmp_path / "first.log"
    done = run_job("train", *MIXED, f"run.dir={straight}")
    assert done.returncode == 0, done.stderr[-3000:]

    # ckpt-10's commit is held, so the kill lands mid-epoch with ckpt-5 the newest commit (as
    # tests/integration/test_train.py).
    process = start_job("train", *MIXED, f"run.dir={resumed}", log_path=log,
                        env=trainer_env(JOB_TEST_HOLD_TASK=r"^checkpoint ckpt-10$"))
    wait_for(lambda: "held for a test: checkpoint ckpt-10" in log.read_text(), timeout=300, process=process,
             what="the commit of ckpt-10 to be held")
    kill_hard(process)
    assert committed_steps(resumed) == [5]
    again = run_job("train", *MIXED, f"run.dir={resumed}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 5" in again.stderr

    step_a, weights_a = final_variables(straight)
    step_b, weights_b = final_variables(resumed)
    assert step_a == step_b and weights_a.keys() == weights_b.keys()
    for name in weights_a:
        np.testing.assert_allclose(weights_b[name], weights_a[name], rtol=1e-6, atol=1e-7, err_msg=name)

