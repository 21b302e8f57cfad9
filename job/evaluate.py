"""Final evaluation: metrics from the test set's predictions, stored as eval/metrics.json and eval/report.txt."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
import tensorflow as tf

from job import data as datalib
from job.metrics import batch_sums, rates

log = logging.getLogger("job")

METRICS_FILE = "eval/metrics.json"
REPORT_FILE = "eval/report.txt"


def predict_logits(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    dataset = datalib.eval_dataset(images, np.zeros(len(images), np.int32), batch_size)
    predict = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
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


def evaluate_and_store(run, cfg, model, splits, step: int, writer=None, label: str = "final") -> dict[str, Any]:
    """Evaluate `model` on the test set, write the reports into the run, print the table, return the metrics."""
    logits = predict_logits(model, splits.x_test, cfg.train.eval_batch_size)
    metrics = compute_metrics(splits.y_test, logits, splits.class_names,
                              splits.fine_to_coarse if cfg.data.label_mode == "fine" else None,
                              splits.coarse_names)
    metrics.update({"step": int(step), "checkpoint": label, "model": cfg.model.name, "dataset": cfg.data.name})
    title = f"Evaluation of {cfg.model.name} on the {cfg.data.name} test set (step {step}, {label} weights)"
    summary = format_report(metrics, title)
    (run.local / "eval").mkdir(parents=True, exist_ok=True)
    (run.local / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    (run.local / REPORT_FILE).write_text(summary + "\n" + format_per_class(metrics))
    run.publish(METRICS_FILE)
    run.publish(REPORT_FILE)
    if writer is not None:
        with writer.as_default(step=step):
            for key in ("loss", "top1", "top5", "macro_f1", "coarse_top1"):
                if key in metrics:
                    tf.summary.scalar(key, metrics[key])
            tf.summary.image("confusion_matrix", confusion_image(np.array(metrics["confusion_matrix"])))
        writer.flush()
    print(summary, flush=True)
    log.info("evaluation stored in %s/%s and %s", run.url, METRICS_FILE, REPORT_FILE)
    return metrics


def _check_readable(prefix: str) -> None:
    """Every tensor of the checkpoint `prefix` reads back (TensorBundle checks each one's CRC), or a one-line
    UserError: before Checkpoint.read, which would fail half-way with a traceback."""
    from job.errors import UserError, first_line

    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except tf.errors.OpError as e:
        why = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", first_line(e.message))
        raise UserError(f"checkpoint {prefix} cannot be read ({type(e).__name__}: {why}); give another prefix, or "
                        f"'latest' for the newest one that verifies") from None


def evaluate_run(run_dir: str, checkpoint: str = "") -> dict[str, Any]:
    """`python -m job evaluate`: rebuild the run's model, restore a checkpoint (default: the newest committed one,
    `best` for the best by validation top-1, or a checkpoint prefix), evaluate and store."""
    from job.builder import build_for_evaluation
    from job.checkpoint import Committed
    from job.errors import UserError
    from job.rundir import RunDir

    parts = build_for_evaluation(RunDir.open(run_dir))
    if checkpoint in ("", "latest"):
        chosen = parts.store.latest()
    elif checkpoint == "best":
        chosen = parts.store.best()
    else:
        if not tf.io.gfile.exists(checkpoint + ".index"):
            raise UserError(f"checkpoint {checkpoint} not found (expected {checkpoint}.index); give a checkpoint "
                            "prefix such as RUN/checkpoints/ckpt-1000, or 'latest' / 'best'")
        chosen = Committed(step=-1, prefix=checkpoint, metrics={})
    if chosen is None:
        raise UserError(f"{parts.run.url} {parts.store.why_none('best' if checkpoint == 'best' else 'latest')}")
    if chosen.step == -1:  # a prefix given by hand has no commit object to verify it against
        _check_readable(chosen.prefix)
    parts.checkpoint.read(chosen.prefix).expect_partial()
    metrics = evaluate_and_store(parts.run, parts.cfg, parts.model, parts.splits, step=chosen.step,
                                 label=checkpoint or "latest")
    parts.run.close(parts.cfg.checkpoint.upload_timeout_seconds)
    return metrics
