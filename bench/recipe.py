"""The recipe section: test top-1 at a fixed step budget on `digits_noisy` (a task made not to saturate), the
techniques of docs/configuration.md "Recipes" each on and off, over several seeds.

One worker trains every run in-process with the trainer's own parts (job.builder, job.loop with the default hooks).
Techniques that change training (mixup, CutMix, label smoothing, the schedule) get runs of their own; the others are
read off each baseline run's final weights, paired by construction:

- BatchNorm recalibration: the test top-1 before and after `job/precise_bn.py` recomputes the statistics of the final
  weights, with the trainer's own calibration batches. The runs train with it off (train.bn_recalibration_batches=0)
  and the bench recalibrates once at the end: what an on run validates last is the same, as training itself never
  reads the moving statistics (BatchNorm normalises with batch statistics while training).
- weight EMA: every run keeps the average (train.ema_decay), which does not change the trained weights; its test top-1
  is taken with its own recalibrated statistics, as the trainer's final evaluation does.
- TTA: translate-only (the mean of the logits on the image and on copies shifted diagonally by -2 and +2 pixels, as
  train.tta=flip-translate does without its mirrors): a mirrored digit is another digit, so flips are not tried.
"""
from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time

import numpy as np

from bench.worker import Sides

BASELINE = "baseline"
# technique -> its label in the table, in the table's order (training_settings: the runs of their own; _SIDES: where
# each side's top-1 is read)
TECHNIQUES = {
    "bn_recalibration": "BatchNorm recalibration",
    "ema": "weight EMA",
    "translate_tta": "translate TTA (±2 px, 3 views)",
    "mixup": "mixup",
    "cutmix": "CutMix",
    "label_smoothing": "label smoothing",
    "triangular": "triangular schedule",
}


def training_settings(epochs: int, mixup: float, cutmix: float, smoothing: float, peak: float) -> dict[str, list]:
    """The runs each seed trains: the baseline and one per technique that changes training."""
    return {
        BASELINE: [],
        "mixup": [f"data.mix.mixup_alpha={mixup}"],
        "cutmix": [f"data.mix.cutmix_alpha={cutmix}"],
        "label_smoothing": [f"optim.label_smoothing={smoothing}"],
        # the peak at the same share of the run as the fast preset's (23%)
        "triangular": ["optim.schedule=triangular", f"optim.warmup_epochs={round(peak * epochs, 3)}"],
    }


def setup_recipe(preset: str, overrides: list[str], seeds: list[int], epochs: int, recalibration_batches: int,
                 ema_decay: float, mixup: float, cutmix: float, smoothing: float, peak: float) -> Sides:
    from job.config import load_config

    settings = training_settings(epochs, mixup, cutmix, smoothing, peak)
    cfg = load_config(preset, overrides)
    info = {"preset": preset, "overrides": overrides, "epochs": epochs, "seeds": seeds, "model": cfg.model.name,
            "data": cfg.data.name, "batch_size": cfg.train.batch_size,
            "recalibration_batches": recalibration_batches, "ema_decay": ema_decay, "settings": settings}
    trials = {}
    for name, extra in settings.items():
        for seed in seeds:
            trials[f"{name} seed {seed}"] = _trial(preset, [*overrides, f"train.epochs={epochs}", *extra],
                                                   seed, recalibration_batches, ema_decay)
    return Sides(trials=trials, info=info)


def _trial(preset, overrides, seed, batches, ema_decay):
    def trial() -> dict:
        return train_and_test(preset, overrides, seed, batches, ema_decay)

    return trial


def train_and_test(preset: str, overrides: list[str], seed: int, batches: int, ema_decay: float) -> dict:
    """One run from scratch to its last step; its test top-1 with and without what can be read off its weights."""
    from job.builder import build_run
    from job.config import load_config
    from job.hooks import default_hooks
    from job.loop import Loop, recalibrate_at
    from job.stopping import StopRequest

    run_dir = tempfile.mkdtemp(prefix="bench-recipe-")
    atexit.register(shutil.rmtree, run_dir, True)
    cfg = load_config(preset, [*overrides, f"train.seed={seed}", "train.bn_recalibration_batches=0",
                               f"train.ema_decay={ema_decay}", "checkpoint.every_steps=1000000000",
                               "run.progress=false", f"run.dir={run_dir}"])
    began = time.perf_counter()
    parts = build_run(cfg, writers=False)
    parts.restore_or_initialize()
    loop = Loop(parts, default_hooks(parts), StopRequest())
    loop.run(restored=False)
    trained = time.perf_counter() - began
    splits = parts.splits
    result = {"seed": seed, "steps": loop.step, "classes": splits.num_classes, "train_images": len(splits.x_train),
              "test_images": len(splits.x_test), "train_seconds": trained,
              "top1_without_recalibration": _top1(parts, "off")}
    recalibrate_at(parts, loop.step, batches)
    result["top1"] = _top1(parts, "off")
    result["top1_translate_tta"] = _top1(parts, "translate")
    with parts.ema.swapped():
        recalibrate_at(parts, loop.step, batches)
        result["top1_ema"] = _top1(parts, "off")
    parts.run.close(60.0)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[recipe] {' '.join(overrides[-2:])} seed {seed}: {result}", file=sys.stderr, flush=True)  # the worker log
    return result


def _top1(parts, tta: str) -> float:
    from job.evaluate import predict_logits

    splits, batch = parts.splits, parts.cfg.train.eval_batch_size
    if tta == "translate":
        import tensorflow as tf

        forward = tf.function(lambda x: translate_logits(parts.model, x), reduce_retracing=True)
        logits = np.concatenate([forward(splits.x_test[i:i + batch].astype(np.float32)).numpy()
                                 for i in range(0, len(splits.x_test), batch)])
    else:
        logits = predict_logits(parts.model, splits.x_test, batch, tta)
    return float((logits.argmax(axis=1) == splits.y_test).mean())


def translate_logits(model, images):
    """job/tta.py's flip-translate without the mirrors: the translated views' mean of the model's own logits. Float
    images (n, H, W, C) in [0, 255]."""
    import tensorflow as tf

    from job.tta import translate_mean

    return translate_mean(lambda views: tf.cast(model(views, training=False), tf.float32), images)


# ------------------------------------------------------------------------------------------------------ the parent

# technique -> (the result key with it on, the setting and key of its off side), read from each seed's runs
_SIDES = {
    "bn_recalibration": ((BASELINE, "top1"), (BASELINE, "top1_without_recalibration")),
    "ema": ((BASELINE, "top1_ema"), (BASELINE, "top1")),
    "translate_tta": ((BASELINE, "top1_translate_tta"), (BASELINE, "top1")),
    "mixup": (("mixup", "top1"), (BASELINE, "top1")),
    "cutmix": (("cutmix", "top1"), (BASELINE, "top1")),
    "label_smoothing": (("label_smoothing", "top1"), (BASELINE, "top1")),
    "triangular": (("triangular", "top1"), (BASELINE, "top1")),
}


def run_recipe(suite) -> None:
    """Every run of every seed in one worker, seed by seed (a drift of the machine's speed cannot matter: the figures
    are accuracies), then one figure for the baseline and one per technique, on against off."""
    from bench.report import Figure, judge, single
    from bench.stats import paired_ratios, summarize

    s = suite.settings
    (worker,) = suite.start([("recipe", "recipe", {
        "preset": s.recipe_preset, "overrides": list(s.recipe_overrides), "seeds": list(s.recipe_seeds),
        "epochs": s.recipe_epochs, "recalibration_batches": s.recipe_recalibration_batches,
        "ema_decay": s.recipe_ema_decay, "mixup": s.recipe_mixup, "cutmix": s.recipe_cutmix,
        "smoothing": s.recipe_smoothing, "peak": s.recipe_peak})])
    runs: dict[str, list[dict]] = {}
    try:
        for seed in s.recipe_seeds:
            for side in worker.sides:
                name, _, run_seed = side.rpartition(" seed ")
                if int(run_seed) == seed:
                    runs.setdefault(name, []).append(worker.trial(side))
    finally:
        rss = {"recipe": worker.close()}
    info, first = worker.info, runs[BASELINE][0]
    chance = 100 / first["classes"]
    setup = (f"{info['model']} on {info['data']}, {first['steps']} steps of {info['batch_size']}, "
             f"{len(s.recipe_seeds)} seeds")
    top1 = {name: [100 * r["top1"] for r in results] for name, results in runs.items()}
    baseline = summarize(top1[BASELINE])
    suite.figures.append(Figure(
        "recipe", f"recipe test top-1 %, baseline ({setup}; cosine, BatchNorm recalibrated): vs chance", baseline,
        "%", "chance", single(chance), "%", summarize([x / chance for x in top1[BASELINE]]),
        goal="well below 100 % (does not saturate)", met=judge(baseline, at_most=95.0), peak_rss_mb=rss,
        details={"info": info, "runs": runs}))
    for technique, label in TECHNIQUES.items():
        (on_run, on_key), (off_run, off_key) = _SIDES[technique]
        on = [100 * r[on_key] for r in runs[on_run]]
        off = [100 * r[off_key] for r in runs[off_run]]
        points = summarize([a - b for a, b in zip(on, off)])
        suite.figures.append(Figure(
            "recipe", f"recipe test top-1 %, {label}: on vs off", summarize(on), "%", "off", summarize(off), "%",
            summarize(paired_ratios(on, off)),
            goal=f"(paired Δ {points.median:+.1f} points, {points.low:+.1f}…{points.high:+.1f})",
            details={"technique": technique, "seeds": list(s.recipe_seeds), "on": on, "off": off,
                     "difference_points": [a - b for a, b in zip(on, off)]}))
