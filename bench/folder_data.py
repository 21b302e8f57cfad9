"""data.name=folder: decoding a folder of photos into the cache (job/data/decoded.py) against Pillow decoding the same
files in a plain loop, per CPU-second, for JPEG and PNG; and the input pipeline fed from the decoded shards.

The photos are crops of scikit-learn's two bundled 427x640 JPEGs (china.jpg, flower.jpg), 320x240 like a phone
picture scaled down, written once as JPEG (quality 90) and as PNG. "job" is the whole first-run path: listing, reading,
SHA-256, EXIF, centre square, Lanczos resize to 32, shards and manifest written, into a new cache each trial. The
plain loop only opens each file and converts it to RGB (no crop, resize or hashing): the floor of Pillow's work.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.worker import Sides

CROP = (320, 240)


def setup_folder(images: int, preset: str, overrides: list[str], pipeline_images: int) -> Sides:
    import sklearn.datasets
    import tensorflow as tf  # noqa: F401 - imported before the trials, as in the trainer
    from PIL import Image

    from job import data as datalib
    from job.config import load_config
    from job.distribute.base import Shard

    work = Path(tempfile.mkdtemp(prefix="bench-folder-"))
    photos = [Image.open(Path(sklearn.datasets.__file__).parent / "images" / f"{n}.jpg").convert("RGB")
              for n in ("china", "flower")]
    rng = np.random.default_rng(0)
    # distinct crop positions per photo: the same crop twice would be the same image in train and test, which the
    # folder loader refuses (docs/own-images.md)
    positions = []
    for photo in photos:
        columns = photo.width - CROP[0]
        drawn = rng.choice(columns * (photo.height - CROP[1]), size=(images + 1) // 2, replace=False)
        positions.append([(int(d % columns), int(d // columns)) for d in drawn])
    for i in range(images):
        photo = photos[i % 2]
        left, top = positions[i % 2][i // 2]
        crop = photo.crop((left, top, left + CROP[0], top + CROP[1]))
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
            path = work / ext / f"class_{i % 2}" / f"{i:05d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            crop.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    trial_number = iter(range(1_000_000))

    def cfg_for(ext: str, cache: Path, stream: str = "auto"):
        return load_config(preset, ["data.name=folder", f"data.dir={work / ext}", f"data.cache_dir={cache}",
                                    "data.validation_split=0", f"data.stream={stream}", *overrides])

    def job_decode(ext: str) -> dict:
        cfg = cfg_for(ext, work / f"cache-{next(trial_number)}")  # a new cache: every trial decodes
        began, cpu = time.perf_counter(), time.process_time()
        datalib.load_splits(cfg.data, cfg.train.seed)
        return _rates(images, time.perf_counter() - began, time.process_time() - cpu)

    def pillow_loop(ext: str) -> dict:
        files = sorted((work / ext).rglob(f"*.{ext}"))
        began, cpu = time.perf_counter(), time.process_time()
        for path in files:
            with Image.open(path) as image:
                image.convert("RGB")
        return _rates(len(files), time.perf_counter() - began, time.process_time() - cpu)

    shards_cfg = cfg_for("png", work / "cache-shards")
    datalib.load_splits(shards_cfg.data, shards_cfg.train.seed)  # decoded once; the pipeline trials read the shards
    shard = Shard(num_shards=1, index=0, batch_size=shards_cfg.train.batch_size)
    epochs = iter(range(1_000_000))

    streamed_cfg = cfg_for("png", work / "cache-shards", stream="always")  # the same cache, read by index

    def pipeline_from_shards(cfg) -> dict:
        """The shards read and verified (into memory, or opened for streaming), then epochs drained (at least
        `pipeline_images` images, the first batch of each epoch untimed, as in bench/pipeline.py)."""
        began = time.perf_counter()
        splits = datalib.load_splits(cfg.data, cfg.train.seed)
        loaded = time.perf_counter()
        count, seconds = 0, 0.0
        while count < pipeline_images:
            iterator = iter(datalib.train_dataset(splits.x_train, splits.y_train, cfg.data, shard,
                                                  seed=cfg.train.seed, epoch=next(epochs)))
            next(iterator)
            first = time.perf_counter()
            count += shard.batch_size * sum(1 for _ in iterator)
            seconds += time.perf_counter() - first
        return {"images_per_second": count / seconds, "load_seconds": loaded - began,
                "examples": len(splits.x_train)}

    return Sides(trials={"job jpg": lambda: job_decode("jpg"), "pillow jpg": lambda: pillow_loop("jpg"),
                         "job png": lambda: job_decode("png"), "pillow png": lambda: pillow_loop("png"),
                         "shards pipeline": lambda: pipeline_from_shards(shards_cfg),
                         "streamed pipeline": lambda: pipeline_from_shards(streamed_cfg)},
                 info={"images": images, "crop": list(CROP), "batch_size": shard.batch_size})


def _rates(count: int, seconds: float, cpu_seconds: float) -> dict:
    return {"images_per_second": count / seconds, "images_per_cpu_second": count / max(cpu_seconds, 1e-9)}
