"""(8) LiteRT: the exported files' size and CPU latency per image, float32 and int8 against the Keras model.

For each model (settings.litert_cases), a worker builds a fresh model of the preset (random weights: size and speed
do not depend on them), exports it as the trainer does (`model.keras`; job/litert.py's float and full-integer int8
conversions, int8 calibrated on synthetic pictures) and times one image per call, as a device classifies a photo:
Keras through job.inference.Classifier (a traced tf.function), LiteRT through job.litert.LiteRTModel (ai_edge_litert's
interpreter with XNNPACK, as many threads as TensorFlow gets). Trials interleaved: keras, float, int8, then reversed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.report import Figure
from bench.stats import paired_ratios, summarize
from bench.worker import Sides

SIDES = ("keras", "litert float", "litert int8")


def setup_litert(preset: str, folder: str, images: int) -> Sides:
    """Build, save and convert the model; the three timed sides classify `images` single images each."""
    from job import config as configlib
    from job.inference import Classifier
    from job.litert import FLOAT_FILE, INT8_FILE, LiteRTModel, convert
    from job.weights import build_inference_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = configlib.load_config(preset, [f"run.dir={folder / 'run'}"])
    model = build_inference_model(cfg, 10)
    side = int(model.input_shape[1])
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, side)[None, :, None] + np.linspace(0, 50, side)[:, None, None]
    pictures = np.clip(base + rng.normal(0, 30, (images + 64, side, side, 3)), 0, 255).astype(np.uint8)
    keras_file = folder / "model.keras"
    model.save(keras_file)
    began = time.perf_counter()
    (folder / FLOAT_FILE).write_bytes(convert(model))
    float_seconds = time.perf_counter() - began
    began = time.perf_counter()
    (folder / INT8_FILE).write_bytes(convert(model, pictures[images:]))
    int8_seconds = time.perf_counter() - began
    keras = Classifier.from_file(str(keras_file))
    runners = {"keras": keras.predict, "litert float": LiteRTModel(str(folder / FLOAT_FILE)).probabilities,
               "litert int8": LiteRTModel(str(folder / INT8_FILE)).probabilities}
    samples = pictures[:images]

    def timed(run):
        def trial() -> dict:
            latencies = []
            for image in samples:
                start = time.perf_counter()
                run(image[None])
                latencies.append(time.perf_counter() - start)
            ms = 1000 * np.asarray(latencies)
            return {"images": len(ms), "ms_per_image": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}
        return trial

    sizes = {name: (folder / file).stat().st_size for name, file in
             (("keras", "model.keras"), ("litert float", FLOAT_FILE), ("litert int8", INT8_FILE))}
    return Sides(trials={name: timed(run) for name, run in runners.items()},
                 info={"model": cfg.model.name, "bytes": sizes, "parameters": int(model.count_params()),
                       "conversion_seconds": {"float": float_seconds, "int8 (with calibration)": int8_seconds}})


def run_litert(suite) -> None:
    """Suite.litert: the figures of (8)."""
    import shutil
    import tempfile

    s = suite.settings
    for label, preset in s.litert_cases:
        folder = Path(tempfile.mkdtemp(prefix="bench-litert-"))
        try:
            (worker,) = suite.start([(f"litert {label}", "litert", {
                "preset": preset, "folder": str(folder), "images": s.litert_images})])
            try:
                sides = [(worker, side) for side in SIDES]
                suite.warm_up(sides)
                results = suite.measure(sides, s.repeats)
            finally:
                rss = worker.close()
            litert_figures(suite, label, worker.info, results, rss)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def litert_figures(suite, label: str, info: dict, results: dict, rss: float | None) -> None:
    keras = [t["ms_per_image"] for t in results["keras"]]
    for side in ("litert float", "litert int8"):
        value = [t["ms_per_image"] for t in results[side]]
        suite.figures.append(Figure(
            "litert", f"{side} ms per image, {label} (batch 1, CPU): vs Keras", summarize(value), "ms",
            "Keras (tf.function)", summarize(keras), "ms", summarize(paired_ratios(value, keras)),
            goal="(< 1: faster than Keras)", peak_rss_mb={"worker": rss} if rss else {},
            details={"value": results[side], "baseline": results["keras"], "info": info}))
    mb = {side: info["bytes"][side] / 1e6 for side in SIDES}
    for side, baseline in (("litert float", "keras"), ("litert int8", "litert float")):
        suite.figures.append(Figure(
            "litert", f"{side} file MB, {label}: vs {baseline}", summarize([mb[side]]), "MB", baseline,
            summarize([mb[baseline]]), "MB", summarize([mb[side] / mb[baseline]]),
            goal="≈ 0.25 (int8 weights)" if side == "litert int8" else "", details={"info": info}))
