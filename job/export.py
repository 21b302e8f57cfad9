"""The trained model, stored in the run's export/ for use outside the trainer (its preprocessing inside each):

    export/model.keras       Keras 3's format: job.models.load_model(path), `python -m job predict --model`
    export/model.h5          the same model in HDF5 (Keras' legacy format, for code that expects .h5)
    export/saved_model/      a TF SavedModel for tf.saved_model.load and TensorFlow Serving; signatures
                             serving_default (float32 images in [0, 255]) and serving_uint8 (uint8 images), both
                             (n, S, S, 3) -> probabilities (n, classes), class_ids (n,), class_names (n,)
    export/tfserving/<model>/1/  the same SavedModel in TensorFlow Serving's layout (a numeric version folder under the
                             model's): KServe's TF Serving runtime takes export/tfserving/<model> as its storageUri
    export/model.tflite      LiteRT float32; export/model_int8.tflite full-integer int8 (job/litert.py; export.litert)
    export/classes.json      {"classes": [name of class 0, ...]}
    export/model_card.json   the input it takes, how to bring an image to it, its metrics, the model files' SHA-256;
                             MODEL_CARD.md for people
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

from job.inference import dataset_name
from job.layout import (
    CARD_MARKDOWN,
    CLASSES_FILE,
    EXPORT_DIR,
    H5_FILE,
    KERAS_FILE,
    LITERT_FILE,
    LITERT_INT8_FILE,
    MODEL_CARD_FILE,
    SAVED_MODEL_DIR,
    TFSERVING_DIR,
)
from job.modelfile import CHECKSUMS_KEY, file_checksum
from job.rundir import RunDir

log = logging.getLogger("job")

SIGNATURES = ("serving_default", "serving_uint8")
TFSERVING_VERSION = 1  # TF Serving serves the highest numeric folder under the model's
PREPROCESSING = ("decode (PNG, JPEG, WebP, BMP, GIF first frame, TIFF), turn upright by EXIF, 8-bit RGB "
                 "(transparency on white), centre square crop, Lanczos (antialiased) resize to {side}x{side}; "
                 "pixels stay in [0, 255]: normalization ({normalization}) is inside the model")


def export_model(run: RunDir, cfg, model: keras.Model, class_names: list[str], evaluation: dict | None,
                 splits=None) -> None:
    """Every export of the trained `model`, queued for upload with the run. The LiteRT files (cfg.export.litert) need
    `splits`: int8 calibration on its training images, each file's accuracy on its test images."""
    started = time.perf_counter()
    (run.local / EXPORT_DIR).mkdir(parents=True, exist_ok=True)
    model.save(run.local / KERAS_FILE)
    with _absl_errors_only():  # Keras warns that HDF5 is its legacy format; users asked for it by name
        keras.saving.save_model(model, run.local / H5_FILE)
    write_saved_model(model, class_names, run.local / SAVED_MODEL_DIR)
    serving = tfserving_dir(cfg)
    shutil.rmtree(run.local / TFSERVING_DIR, ignore_errors=True)  # one model, one version: this export's
    shutil.copytree(run.local / SAVED_MODEL_DIR, run.local / serving)
    run.write_json(f"{EXPORT_DIR}/{CLASSES_FILE}", {"classes": list(class_names)})
    card = model_card(cfg, model, class_names, evaluation)
    card["files"]["tfserving"] = Path(serving).relative_to(EXPORT_DIR).as_posix()
    files = [KERAS_FILE, H5_FILE]
    if cfg.export.litert:
        from job.litert import export_litert

        card["litert"] = export_litert(run.local / EXPORT_DIR, model, splits, cfg.export.calibration_images,
                                       cfg.train.seed)
        files += [LITERT_FILE, LITERT_INT8_FILE]
        card["files"]["litert"] = [Path(f).name for f in (LITERT_FILE, LITERT_INT8_FILE)]
    card[CHECKSUMS_KEY] = {Path(f).name: file_checksum(run.local / f) for f in files}  # modelfile.py
    run.write_json(f"{EXPORT_DIR}/{MODEL_CARD_FILE}", card)
    (run.local / CARD_MARKDOWN).write_text(card_markdown(card))
    for relpath in (*files, SAVED_MODEL_DIR, TFSERVING_DIR, CARD_MARKDOWN):
        run.publish(relpath)
    log.info("exported the model (.keras, .h5, SavedModel, TF Serving's layout%s, classes, model card) to %s/%s in "
             "%.1f s", ", LiteRT float and int8" if cfg.export.litert else "", run.url, EXPORT_DIR,
             time.perf_counter() - started)


def tfserving_dir(cfg) -> str:
    """export/tfserving/<model>/<version>: the folder TF Serving loads (its --model_base_path is the one above)."""
    return f"{TFSERVING_DIR}/{cfg.model.name}/{TFSERVING_VERSION}"


@contextlib.contextmanager
def _absl_errors_only() -> Iterator[None]:
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def write_saved_model(model: keras.Model, class_names: list[str], path) -> None:
    side = int(model.input_shape[1])
    names = tf.constant(list(class_names))

    def outputs(images):
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        class_ids = tf.argmax(probabilities, axis=1)
        return {"probabilities": probabilities, "class_ids": class_ids,
                "class_names": tf.gather(names, class_ids)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", outputs,
                         input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32, name="images")])
    archive.add_endpoint("serving_uint8", lambda images: outputs(tf.cast(images, tf.float32)),
                         input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8, name="images")])
    archive.write_out(str(path), verbose=False)


def model_card(cfg, model: keras.Model, class_names: list[str], evaluation: dict | None) -> dict:
    side = int(model.input_shape[1])
    metrics = {k: evaluation[k] for k in ("top1", "top5", "loss", "macro_f1", "examples", "step")
               if evaluation and k in evaluation}
    return {
        "model": cfg.model.name,
        "dataset": dataset_name(cfg),
        "classes": len(class_names),
        "input": {"shape": [None, side, side, 3], "dtype": "float32 (uint8 in serving_uint8)",
                  "range": [0, 255], "channels": "RGB"},
        "preprocessing": PREPROCESSING.format(side=side, normalization=cfg.data.normalization),
        "output": "logits (model.keras, model.h5); probabilities, class_ids, class_names (saved_model)",
        "metrics": metrics,
        "metrics_on": f"the {cfg.data.name} test set, {metrics.get('examples', '?')} images",
        "training": {"epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "optimizer": cfg.optim.name,
                     "seed": cfg.train.seed, "parameters": int(model.count_params())},
        "files": {"keras": "model.keras", "hdf5": "model.h5", "saved_model": "saved_model",
                  "signatures": list(SIGNATURES), "classes": CLASSES_FILE},
    }


def card_markdown(card: dict) -> str:
    metrics = card["metrics"]
    lines = [f"# {card['model']} on {card['dataset']}", "",
             f"- **Input**: RGB images {card['input']['shape'][1]}x{card['input']['shape'][2]}, pixel values in "
             f"[0, 255] ({card['input']['dtype']})",
             f"- **Preprocessing before the model**: {card['preprocessing']}",
             f"- **Output**: {card['output']}; {card['classes']} classes in classes.json",
             f"- **Test metrics** ({card['metrics_on']}): " + (
                 ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
                 or "not evaluated"),
             f"- **Training**: {card['training']}",
             *_litert_lines(card.get("litert")),
             "", "Load: `job.models.load_model('model.keras')`, `tf.saved_model.load('saved_model')`, or "
             "`python -m job predict --model model.keras IMAGE...`", ""]
    return "\n".join(lines)


def _litert_lines(litert: dict | None) -> list[str]:
    if not litert:
        return []
    lines = ["- **LiteRT** (`ai_edge_litert.interpreter.Interpreter`, or `python -m job predict --model FILE`):"]
    for name, entry in litert.items():
        top1 = entry["metrics"].get("top1")
        accuracy = f"test top1 {top1:.4f}" if top1 is not None else "not evaluated (no test split)"
        lines.append(f"  - `{name}`: {entry['bytes'] / 1e6:.2f} MB, {accuracy}; takes {entry['input']}")
    return lines


def export_run(selection) -> None:
    """`python -m job export`: the exports of a run again, from the checkpoint `selection` names (job/weights.py); the
    model card carries the final evaluation when it is of the same step."""
    from job.layout import METRICS_FILE
    from job.weights import load

    loaded = load(selection)
    splits = None
    if loaded.cfg.export.litert:  # before anything is written: the dataset may be missing
        from job.data import load_splits

        splits = load_splits(loaded.cfg.data, loaded.cfg.train.seed, run_dir=selection.run_dir)
    run = RunDir.open(selection.run_dir)
    try:
        metrics = run.read_record(METRICS_FILE)
        evaluation = metrics if metrics.get("step") == loaded.step else None
        export_model(run, loaded.cfg, loaded.model, loaded.classes, evaluation, splits)
    finally:
        run.close(loaded.cfg.checkpoint.upload_timeout_seconds)
