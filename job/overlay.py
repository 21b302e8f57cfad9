"""Grad-CAM heat maps drawn over images for people: `predict --explain`, `serve`'s ?explain=true and the report's
gallery all draw with `overlay_picture`, at OVERLAY_SIDE pixels (a model's 32x32 input would be too small to see).
No TensorFlow (serve describes its API before TensorFlow is imported); job/gradcam.py computes the heat maps."""
from __future__ import annotations

import numpy as np

OVERLAY_SIDE = 256


def overlay(image, heatmap, alpha: float = 0.45) -> np.ndarray:
    """`image` ((H, W, C) in [0, 255], C = 1 or 3) with `heatmap` ((H, W) in [0, 1]) blended on top in the jet
    colour map, as (H, W, 3) uint8."""
    from matplotlib import colormaps

    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    heatmap = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.shape[:2]}")
    colour = colormaps["jet"](heatmap)[..., :3] * 255.0
    return np.clip((1 - alpha) * image + alpha * colour, 0, 255).astype(np.uint8)


def overlay_picture(image, heatmap):
    """An image's centre square at OVERLAY_SIDE pixels with its Grad-CAM `heatmap` (of the model's input, the same
    square; (h, w) in [0, 1]) upscaled smoothly on top. `image`: a PIL image or an (H, W, 3) uint8 array. Returns a
    PIL image."""
    from PIL import Image

    from job.images import to_model_input

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, np.uint8))
    base = to_model_input(image, OVERLAY_SIDE)
    heat = Image.fromarray(np.asarray(heatmap, np.float32)).resize((OVERLAY_SIDE, OVERLAY_SIDE),
                                                                        Image.Resampling.BILINEAR)
    return Image.fromarray(overlay(base, np.asarray(heat)))
