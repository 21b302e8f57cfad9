"""Final evaluation: metrics from the test set's predictions, stored as eval/metrics.json and eval/report.txt."""
from __future__ import annotations

import json
import logging
import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from job import data as datalib
from job.layout import EVAL_DIR, METRICS_FILE
from job.layout import REPORT_TEXT_FILE as REPORT_FILE
from job.metrics import batch_sums, rates
from job.tta import describe as describe_tta
from job.tta import tta_logits

log = logging.getLogger("job")

HEADLINE_KEYS = ("loss", "top1", "top5", "macro_f1", "coarse_top1")  # also stored without TTA, and in TensorBoard
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {TTA mode: compiled forward pass}


def predict_logits(model, images: np.ndarray, batch_size: int, tta: str = "off") -> np.ndarray:
    """The model's float32 logits of `images` (inference mode), batch by batch, under test-time augmentation `tta`
    (job/tta.py); one compiled function per model and mode."""
    compiled = _COMPILED.setdefault(model, {})
    if tta not in compiled:
        compiled[tta] = tf.function(
            lambda x: tta_logits(lambda v: tf.cast(model(v, training=False), tf.float32), x, tta),
            reduce_retracing=True)
    predict = compiled[tta]
    dataset = datalib.eval_dataset(images, np.zeros(len(images), np.int32), batch_size)
    return np.concatenate([predict(x).numpy() for x, _ in dataset]) if len(images) else np.zeros((0, 0))


def compute_metrics(labels: np.ndarray, logits: np.ndarray, class_names: list[str],
                    fine_to_coarse: np.ndarray | None = None, coarse_names: list[str] | None = None) -> dict[str, Any]:
    """Loss, top-1/top-5, macro and per-class precision/recall/F1, the confusion matrix, and (CIFAR-100) the
    superclass accuracy of the fine predictions. Classes never predicted get precision 0 (as sklearn's
    zero_division=0)."""
    labels = np.asarray(labels, np.int64)
    num_classes = logits.shape[1]
    predictions = logits.argmax(axis=1)
    # loss, top-1 and top-5 as training and validation define them (job.metrics), in float64 for the loss
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.constant(logits, tf.float64))
    sums = {k: float(v) for k, v in batch_sums(tf.constant(logits), tf.constant(labels), per_example).items()}

    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)

    metrics: dict[str, Any] = {
        "examples": int(len(labels)),
        **rates(sums),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion.tolist(),
    }
    if fine_to_coarse is not None:
        metrics["coarse_top1"] = float((fine_to_coarse[predictions] == fine_to_coarse[labels]).mean())
        metrics["coarse_classes"] = list(coarse_names or [])
    return metrics


def format_report(metrics: dict[str, Any], title: str) -> str:
    lines = [title, "",
             f"{'examples':<18}{metrics['examples']:>10}",
             f"{'loss':<18}{metrics['loss']:>10.4f}",
             f"{'top-1 accuracy':<18}{metrics['top1']:>10.4f}",
             f"{'top-5 accuracy':<18}{metrics['top5']:>10.4f}"]
    if "coarse_top1" in metrics:
        lines.append(f"{'superclass top-1':<18}{metrics['coarse_top1']:>10.4f}")
    if "without_tta" in metrics:
        plain = metrics["without_tta"]
        lines += [f"{'top-1 without TTA':<18}{plain['top1']:>10.4f}", f"{'loss without TTA':<18}{plain['loss']:>10.4f}"]
    lines += [f"{'macro precision':<18}{metrics['macro_precision']:>10.4f}",
              f"{'macro recall':<18}{metrics['macro_recall']:>10.4f}",
              f"{'macro F1':<18}{metrics['macro_f1']:>10.4f}", ""]
    return "\n".join(lines)


def format_per_class(metrics: dict[str, Any]) -> str:
    width = max([len(c["class"]) for c in metrics["per_class"]] + [5])
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    for c in metrics["per_class"]:
        lines.append(f"{c['class']:<{width}}  {c['precision']:>9.4f}  {c['recall']:>6.4f}  {c['f1']:>6.4f}  "
                     f"{c['support']:>7d}")
    return "\n".join(lines) + "\n"


def confusion_image(confusion: np.ndarray) -> np.ndarray:
    """The confusion matrix as a (1, H, W, 3) uint8 heat map for TensorBoard, rows normalised, scaled up to be seen."""
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    scale = max(1, 400 // confusion.shape[0])
    heat = np.kron(normalised, np.ones((scale, scale)))
    rgb = np.stack([heat, heat ** 0.5 * 0.6, 1.0 - heat], axis=-1)
    return (rgb[None] * 255).astype(np.uint8)


def evaluate_and_store(run, cfg, model, splits, step: int, writer=None, label: str = "final",
                       logits: np.ndarray | None = None, tta: str = "off",
                       plain_logits: np.ndarray | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Evaluate `model` on the test set under test-time augmentation `tta` (or its test-set `logits`, when predicted
    already), write the reports into the run, print the table, return the metrics (with `extra` added: the other
    weights' figures). With TTA on, the metrics without it (from `plain_logits`, or predicted here) are stored beside
    them as `without_tta`."""
    if logits is None:
        logits = predict_logits(model, splits.x_test, cfg.train.eval_batch_size, tta)
    metrics = _test_metrics(cfg, splits, logits)
    metrics.update({"step": int(step), "checkpoint": label, "model": cfg.model.name, "dataset": cfg.data.name,
                    "tta": tta, **(extra or {})})
    if tta != "off":
        if plain_logits is None:
            plain_logits = predict_logits(model, splits.x_test, cfg.train.eval_batch_size)
        plain = _test_metrics(cfg, splits, plain_logits)
        metrics["without_tta"] = {k: plain[k] for k in HEADLINE_KEYS if k in plain}
    title = (f"Evaluation of {cfg.model.name} on the {cfg.data.name} test set (step {step}, {label} weights, "
             f"{describe_tta(tta)})")
    summary = format_report(metrics, title)
    (run.local / EVAL_DIR).mkdir(parents=True, exist_ok=True)
    (run.local / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    (run.local / REPORT_FILE).write_text(summary + "\n" + format_per_class(metrics))
    run.publish(METRICS_FILE)
    run.publish(REPORT_FILE)
    if writer is not None:
        with writer.as_default(step=step):
            for key in HEADLINE_KEYS:
                if key in metrics:
                    tf.summary.scalar(key, metrics[key])
                if key in metrics.get("without_tta", {}):
                    tf.summary.scalar(f"{key}_without_tta", metrics["without_tta"][key])
            tf.summary.image("confusion_matrix", confusion_image(np.array(metrics["confusion_matrix"])))
        writer.flush()
    print(summary, flush=True)
    log.info("evaluation stored in %s/%s and %s", run.url, METRICS_FILE, REPORT_FILE)
    return metrics


def _test_metrics(cfg, splits, logits: np.ndarray) -> dict[str, Any]:
    return compute_metrics(splits.y_test, logits, splits.class_names,
                           splits.fine_to_coarse if cfg.data.label_mode == "fine" else None, splits.coarse_names)


def evaluate_run(selection, tta: str | None = None) -> dict[str, Any]:
    """`python -m job evaluate`: rebuild the run's model, restore the selected checkpoint (job/weights.py: latest,
    best or a prefix), evaluate (under `tta`, by default the run's train.tta) and store."""
    from job.builder import build_for_evaluation
    from job.rundir import RunDir
    from job.weights import choose, restore

    parts = build_for_evaluation(RunDir.open(selection.run_dir))
    chosen = choose(parts.store, selection)
    restore(parts.checkpoint, parts.ema, chosen.prefix, selection)
    metrics = evaluate_and_store(parts.run, parts.cfg, parts.model, parts.splits, step=chosen.step,
                                 label=selection.label, tta=tta or parts.cfg.train.tta)
    parts.run.close(parts.cfg.checkpoint.upload_timeout_seconds)
    return metrics
