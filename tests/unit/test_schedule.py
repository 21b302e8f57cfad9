"""The learning-rate schedule (job/optim.py; docs: optim.* keys): every kind, the warmup, the per-256 scaling, the
fine-tuning factor, and a resume in the middle of the warmup (the schedule is a function of the restored step)."""
import numpy as np
import pytest

from job.config import load_config
from job.optim import make_optimizer, make_schedule

SPE = 10  # steps per epoch


def schedule(*overrides: str):
    return make_schedule(load_config("digits_resnet20", ["train.epochs=10", "train.batch_size=128", *overrides]),
                         SPE)


def lrs(sched, steps) -> np.ndarray:
    return np.array([float(sched(s)) for s in steps])


def test_the_base_lr_is_given_per_256_images():
    flat = schedule("optim.schedule=constant", "optim.warmup_epochs=0", "optim.lr=0.2")
    assert lrs(flat, [0, 50, 99]) == pytest.approx([0.1] * 3)  # 0.2 x 128 / 256


def test_cosine_decays_from_the_warmup_end_to_zero():
    cos = schedule("optim.schedule=cosine", "optim.warmup_epochs=2", "optim.lr=0.256")  # base 0.128
    base, warmup, total = 0.128, 2 * SPE, 10 * SPE
    assert float(cos(warmup)) == pytest.approx(base)
    assert float(cos(warmup + (total - warmup) // 2)) == pytest.approx(base / 2, rel=1e-5)
    assert float(cos(total)) == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.diff(lrs(cos, range(warmup, total + 1))) <= 1e-9)


def test_warmup_is_linear_and_reaches_the_base_lr_at_its_end():
    warm = schedule("optim.schedule=constant", "optim.warmup_epochs=2", "optim.lr=0.2")
    assert lrs(warm, range(20)) == pytest.approx([0.1 * (s + 1) / 20 for s in range(20)], rel=1e-6)
    assert float(warm(20)) == pytest.approx(0.1) and float(warm(95)) == pytest.approx(0.1)


def test_step_divides_at_each_boundary():
    step = schedule("optim.schedule=step", "optim.warmup_epochs=0", "optim.lr=0.2", "optim.step_epochs=[3,6]",
                    "optim.step_factor=0.1")
    assert lrs(step, [0, 29, 30, 59, 60, 99]) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-5)


def test_triangular_rises_over_the_warmup_then_falls_linearly_to_zero():
    tri = schedule("optim.schedule=triangular", "optim.warmup_epochs=2", "optim.lr=0.2")
    assert float(tri(19)) == pytest.approx(0.1, rel=1e-6)
    assert float(tri(20 + 40)) == pytest.approx(0.05, rel=1e-5)
    assert float(tri(100)) == pytest.approx(0.0, abs=1e-7)


def test_the_finetuning_phase_runs_at_its_factor_of_the_base_lr():
    cfg = load_config("cifar100_vgg16_transfer", ["train.epochs=2", "train.finetune_epochs=2",
                                                  "optim.schedule=constant", "optim.warmup_epochs=0"])
    sched = make_schedule(cfg, SPE)
    base = cfg.optim.lr * cfg.train.batch_size / 256
    assert float(sched(19)) == pytest.approx(base)
    assert float(sched(20)) == pytest.approx(base * cfg.train.finetune_lr_factor)


@pytest.mark.parametrize("kind", ["cosine", "step", "constant", "triangular"])
def test_a_resume_in_the_middle_of_the_warmup_continues_the_same_learning_rates(kind):
    """The schedule's only state is the optimizer's step counter, which the checkpoint restores: an optimizer built
    fresh and set to step k (a resume) gives the learning rates an uninterrupted one has at k, k+1, ..."""
    cfg = load_config("digits_resnet20", ["train.epochs=10", f"optim.schedule={kind}", "optim.warmup_epochs=3",
                                          "optim.step_epochs=[5]"])
    straight = make_optimizer(cfg, SPE)
    expected = []
    for k in range(12, 18):  # inside the 30-step warmup
        straight.iterations.assign(k)
        expected.append(float(straight.learning_rate))
    resumed = make_optimizer(cfg, SPE)
    resumed.iterations.assign(12)
    got = []
    for _ in range(6):
        got.append(float(resumed.learning_rate))
        resumed.iterations.assign_add(1)
    assert got == pytest.approx(expected) and expected[0] < expected[-1] < float(make_schedule(cfg, SPE)(30))
