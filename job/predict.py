"""`python -m job predict`: classify image files, folders and gs:// objects with a run's model.

Files are read, decoded (job/images.py) and classified in batches, in the order given (a folder's images sorted by
path), so 10,000 files need no more memory than one batch. A file that cannot be classified gets one line on stderr
naming it and why; the others are still classified. The exit status is 2 only when nothing could be classified.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from job.errors import UserError, first_line
from job.images import DEFAULT_MAX_PIXELS, ImageError, decode, open_rgb
from job.inference import prediction_record

log = logging.getLogger("job")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # what a folder is searched for
BATCH = 64


@dataclass
class Source:
    """One image to classify: its name as given (a path or gs:// URL) and how to read its bytes."""
    name: str
    read: Callable[[], bytes]


def main(args, selection) -> int:
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    from job.weights import check

    check(selection)  # the weights, then every PATH, before TensorFlow is imported
    if args.explain and (selection.model_file or "").endswith(".tflite"):
        from job.litert import NO_GRADCAM

        raise UserError(f"--explain: {NO_GRADCAM}")
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    sources = list(find_images(args.paths))
    explain_dir = _explain_dir(args.explain) if args.explain else None

    from job.inference import Classifier

    classifier = Classifier.load(selection, args.tta)
    classified = failed = 0
    names = _unique_stems([s.name for s in sources]) if explain_dir else {}
    top = min(args.top, len(classifier.class_names))
    show = _print_json if args.json else _Table([s.name for s in sources], classifier.class_names, top).print
    with _progress(len(sources)) as bar:
        for batch in _batches(sources, classifier.image_size, max_pixels):
            good = [(source, image) for source, image, error in batch if error is None]
            for source, _, error in batch:
                if error is not None:
                    failed += 1
                    print(f"error: {source.name}: {error}", file=sys.stderr, flush=True)
            if good:
                images = np.stack([image for _, image in good])
                probabilities = classifier.predict(images)
                for (source, _), row in zip(good, probabilities):
                    show(source.name, classifier.top(row, top))
                    classified += 1
                if explain_dir:
                    _write_explanations(classifier, good, explain_dir, names, max_pixels)
            bar.update(len(batch))
    log.info("classified %d image(s)%s", classified, f", {failed} could not be read" if failed else "")
    if explain_dir and classified:
        log.info("Grad-CAM overlays in %s", explain_dir)
    if not classified:
        raise UserError(f"none of the {len(sources)} file(s) could be classified (see the lines above)")
    return 0


# ------------------------------------------------------------------------------------------------------ inputs

def find_images(paths: Iterable[str]) -> Iterator[Source]:
    """Each PATH as the images it names: a file (whatever its name), a folder's image files (recursively, sorted),
    or a gs:// object, or the image objects under a gs:// prefix. A PATH naming nothing is a UserError."""
    for path in paths:
        found = list(_gcs_images(path) if path.startswith("gs://") else _local_images(path))
        if not found:
            raise UserError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); give image files or folders")
        yield from found


def _local_images(path: str) -> Iterator[Source]:
    p = Path(path)
    if p.is_file():
        yield Source(path, p.read_bytes)
    elif p.is_dir():
        for file in sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES):
            yield Source(str(file), file.read_bytes)
    elif "://" in path:
        raise UserError(f"{path}: only local paths and gs:// URLs are supported")
    else:
        raise UserError(f"{path} does not exist; give an image file, a folder or a gs:// URL")


def _gcs_images(url: str) -> Iterator[Source]:
    from job.storage import open_storage

    parent, _, name = url.rstrip("/").rpartition("/")
    if name and parent.count("/") >= 2:  # gs://bucket/.../name: an object?
        storage = open_storage(parent)
        if storage.exists(name):
            yield Source(url, lambda: storage.read_bytes(name))
            return
    storage = open_storage(url)
    base = url.rstrip("/")
    for relpath in storage.list(""):
        if Path(relpath).suffix.lower() in IMAGE_SUFFIXES:
            yield Source(f"{base}/{relpath}", lambda relpath=relpath: storage.read_bytes(relpath))


def _batches(sources: list[Source], size: int, max_pixels: int) -> Iterator[list[tuple[Source, object, str | None]]]:
    """(source, uint8 image or None, error or None) for BATCH sources at a time."""
    for start in range(0, len(sources), BATCH):
        batch = []
        for source in sources[start:start + BATCH]:
            try:
                batch.append((source, decode(source.read(), size, max_pixels), None))
            except ImageError as e:
                batch.append((source, None, str(e)))
            except OSError as e:  # unreadable: permissions, a file gone since it was listed
                batch.append((source, None, f"cannot read it ({e.strerror or first_line(e)})"))
        yield batch


# ----------------------------------------------------------------------------------------------------- outputs

class _Table:
    """Result rows: file, then the top classes with their probabilities; columns sized to the names, long paths
    shortened from the left."""

    def __init__(self, files: list[str], classes: list[str], top: int):
        self.file_width = min(60, max([len("file")] + [len(f) for f in files]))
        self.cell_width = min(24, max(len(c) for c in classes)) + 7
        self.top = top
        self.header_printed = False

    def print(self, name: str, top: list[tuple[int, str, float]]) -> None:
        if not self.header_printed:
            print(f"{'file':<{self.file_width}}  " + "  ".join(
                f"{'top-' + str(k + 1):<{self.cell_width}}" for k in range(self.top)).rstrip())
            self.header_printed = True
        shown = name if len(name) <= self.file_width else "…" + name[-(self.file_width - 1):]
        cells = [f"{c[:self.cell_width - 7]} {p:6.1%}" for _, c, p in top]
        print(f"{shown:<{self.file_width}}  " + "  ".join(f"{c:<{self.cell_width}}" for c in cells).rstrip(),
              flush=True)


def _print_json(name: str, top: list[tuple[int, str, float]]) -> None:
    print(json.dumps(prediction_record(name, top)), flush=True)


def _write_explanations(classifier, good: list, out: Path, names: dict[str, str], max_pixels: int) -> None:
    """A Grad-CAM overlay per image (job/overlay.py): <DIR>/<name>.gradcam.png."""
    from job.overlay import overlay_picture

    heatmaps = classifier.explain(np.stack([image for _, image in good]))
    for (source, _), heatmap in zip(good, heatmaps):
        picture = overlay_picture(open_rgb(source.read(), max_pixels), heatmap)
        picture.save(out / f"{names[source.name]}.gradcam.png")


def _explain_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--explain {path}: cannot create the folder ({e.strerror}); give a writable folder") from None
    return out


def _unique_stems(names: list[str]) -> dict[str, str]:
    """A file name stem per image, made unique with -2, -3, ... (two folders may both hold cat.png)."""
    taken: dict[str, int] = {}
    out = {}
    for name in names:
        stem = Path(name.rstrip("/")).stem or "image"
        taken[stem] = taken.get(stem, 0) + 1
        out[name] = stem if taken[stem] == 1 else f"{stem}-{taken[stem]}"
    return out


class _progress:
    """A tqdm bar on stderr for more than one file when stderr is a terminal (JOB_PROGRESS=bar forces it)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        shown = total > 1 and (sys.stderr.isatty() or os.environ.get("JOB_PROGRESS") == "bar")
        self.bar = tqdm(total=total, unit="img", desc="classifying", disable=not shown, file=sys.stderr)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc) -> None:
        self.bar.close()
