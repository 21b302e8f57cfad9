"""`python -m job export-data`: a built-in dataset (digits, the CIFAR archives) written as a folder of PNG files in
the layout data.name=folder reads, its train/test split kept (OUT/train/<class>/00000.png, OUT/test/<class>/...).

Training on the folder then sees the same pixels as training on the built-in dataset (PNG is lossless and the images
are already at the model's side), which is how a folder run is checked against the built-in one. numpy and Pillow
only: no TensorFlow.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from job.errors import UserError
from job.storage import open_storage

log = logging.getLogger("job")

EXPORTABLE = ("cifar10", "cifar100", "digits")


def export_dataset(name: str, out: str, data_dir: str = "data", download: bool = True) -> int:
    """Write dataset `name` under `out` (a new or empty local folder, or gs:// prefix); returns the image count."""
    from job.config import DataConfig
    from job.data.splits import DATASETS

    if name not in EXPORTABLE:
        raise UserError(f"export-data writes {', '.join(EXPORTABLE)}, not {name!r}; choose one of them")
    target = open_storage(out)
    if target.list():
        raise UserError(f"{out} is not empty; give a new folder (export-data never overwrites files)")
    splits = DATASETS[name].load(DataConfig(name=name, dir=data_dir, download=download), 0, "")
    names = _folder_names(splits.class_names)
    jobs = [(f"{split}/{names[label]}/{i:05d}.png", image)
            for split, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test))
            for i, (image, label) in enumerate(zip(x, y))]

    def write(job: tuple[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        Image.fromarray(job[1]).save(buffer, "PNG")
        target.write_bytes(job[0], buffer.getvalue())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, jobs))
    log.info("wrote %d train and %d test images of %s as PNG class folders under %s", len(splits.x_train),
             len(splits.x_test), name, out)
    return len(jobs)


def _folder_names(class_names: list[str]) -> list[str]:
    """The class names as folder names that sort in label order (so a folder run has the same labels): the names
    themselves when they already do (digits, CIFAR), else prefixed with the label."""
    safe = [n.replace("/", "_").strip() or f"class_{i}" for i, n in enumerate(class_names)]
    if safe == sorted(safe) and len({n.casefold() for n in safe}) == len(safe):
        return safe
    width = len(str(len(safe) - 1))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(safe)]
