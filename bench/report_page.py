"""How long the run report (eval/report.html) takes for a CIFAR-100-sized test set, against what the evaluation
itself costs: predicting the same images with the preset's model. The page gets the logits of a model that is about
60 % right (so every section has content: mistakes, confusions, a calibration curve) and a 200-epoch history with one
resume; its Grad-CAM gallery runs the real model."""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.worker import Sides


def setup_report_page(preset: str, examples: int, epochs: int) -> Sides:
    import numpy as np

    from job import config as configlib
    from job.evaluate import predict_logits
    from job.models.assembly import build_full_model
    from job.report.build import render_report
    from job.storage import LocalStorage
    from tests.support.cifar_archives import CIFAR100_COARSE, CIFAR100_FINE, CIFAR100_FINE_TO_COARSE

    run = Path(tempfile.mkdtemp(prefix="bench-report-"))
    atexit.register(shutil.rmtree, run, True)
    cfg = configlib.load_config(preset, [f"run.dir={run}"])
    (run / "config.yaml").write_text(configlib.to_yaml(cfg))
    steps = 390
    history = [{"epoch": e, "step": steps * e, "train_loss": 4 / e, "train_top1": 1 - 1 / e, "train_top5": 1.0,
                "val_loss": 4 / e, "val_top1": 1 - 1.2 / e, "val_top5": 1.0, "lr": 0.1 / e,
                "images_per_second": 900.0, "time": 1000.0 * e, "start": 0 if e <= epochs // 2 else 1}
               for e in range(1, epochs + 1)]
    starts = [{"started_at": 0.0, "step": 0}, {"started_at": 1000.0 * (epochs // 2), "step": steps * (epochs // 2)}]
    (run / "history.json").write_text(json.dumps({"steps_per_epoch": steps, "epochs": history, "starts": starts}))

    rng = np.random.default_rng(0)
    labels = np.arange(examples) % 100
    splits = SimpleNamespace(x_test=rng.integers(0, 256, size=(examples, 32, 32, 3)).astype(np.uint8),
                             y_test=labels, class_names=CIFAR100_FINE, coarse_names=CIFAR100_COARSE,
                             fine_to_coarse=CIFAR100_FINE_TO_COARSE)
    model = build_full_model(cfg, 100, (32, 32, 3))
    logits = rng.normal(size=(examples, 100)).astype(np.float32)
    logits[np.arange(examples), labels] += 3.0

    def predict() -> dict:
        began = time.perf_counter()
        predict_logits(model, splits.x_test, cfg.train.eval_batch_size)
        return {"seconds": time.perf_counter() - began}

    def page() -> dict:
        began = time.perf_counter()
        html = render_report(str(run), LocalStorage(run), cfg, model, splits, logits, step=steps * epochs,
                             weights="final")
        return {"seconds": time.perf_counter() - began, "bytes": len(html)}

    def end_of_run(passes: int):
        """The end of a run: the final evaluation predicts the test set, the report is rendered from those logits
        (one pass, job/train.py since the third wave) or after predicting the test set again (two passes, before)."""
        def trial() -> dict:
            began = time.perf_counter()
            for _ in range(passes):
                predict_logits(model, splits.x_test, cfg.train.eval_batch_size)
            render_report(str(run), LocalStorage(run), cfg, model, splits, logits, step=steps * epochs,
                          weights="final")
            return {"seconds": time.perf_counter() - began}
        return trial

    return Sides(trials={"predict": predict, "report": page, "end_one_pass": end_of_run(1),
                         "end_two_passes": end_of_run(2)},
                 info={"model": cfg.model.name, "examples": examples, "classes": 100, "epochs": epochs})
