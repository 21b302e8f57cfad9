"""The report's gallery: the most confident correct predictions and the most confident mistakes on the test set, each
with its true class, the top-3 predictions and a Grad-CAM overlay of the predicted class (job/gradcam.py)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from job.gradcam import NoFeatureMapError, gradcam
from job.overlay import overlay_picture
from job.report import analysis, plots

log = logging.getLogger("job")

SCALE = 4  # 32x32 test images are shown at 128x128


def gallery(model, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, names: list[str],
            per_group: int = 8) -> dict[str, Any]:
    """{"groups": [(title, [card, ...]), ...], "gradcam": None or why it is missing}. A card has the image and its
    overlay as data URIs, the true class and the top-3 (class, probability, is it the true one)."""
    picks = analysis.gallery_picks(probabilities, labels, per_group)
    chosen = np.concatenate([picks["correct"], picks["mistakes"]]).astype(np.int64)
    heatmaps, missing = None, None
    if len(chosen):
        try:
            heatmaps = gradcam(model, images[chosen], class_indices=probabilities[chosen].argmax(axis=1))
        except NoFeatureMapError as e:
            missing = str(e)
    classes, probs = analysis.top_k(probabilities[chosen], 3)
    cards = []
    for row, index in enumerate(chosen):
        image = images[index]
        cards.append({
            "index": int(index),
            "image": plots.image_uri(image, SCALE),
            "overlay": None if heatmaps is None else plots.image_uri(np.asarray(overlay_picture(image, heatmaps[row])),
                                                                     1),
            "true": names[labels[index]],
            "top": [{"name": names[c], "probability": float(p), "correct": bool(c == labels[index])}
                    for c, p in zip(classes[row], probs[row])],
        })
    split = len(picks["correct"])
    return {"groups": [("Most confident correct predictions", cards[:split]),
                       ("Most confident mistakes", cards[split:])],
            "gradcam": missing}
