"""`data.name=folder`: a local or gs:// folder of images, one subfolder per class, as a dataset.

Two layouts (the convention of Keras' image_dataset_from_directory and torchvision's ImageFolder):

    DIR/<class>/**/*.jpg                                    the test split is drawn (stratified, data.split_seed)
    DIR/train/<class>/...  DIR/test/<class>/...  [DIR/validation/<class>/...]   the splits as given

Class names are the folder names, sorted; the label of a class is its position in that order. Files are taken by
their extension (IMAGE_EXTENSIONS) and names starting with "." are ignored. Everything here is numpy and Pillow only:
the data is loaded before TensorFlow is imported (job/preflight.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from job.data.decoded import DecodedSet, listing_key, load_or_decode
from job.data.shards import select
from job.errors import DataError, UserError, first_line
from job.layout import DATA_MANIFEST_FILE, DECODED_DIR
from job.storage import open_storage

if TYPE_CHECKING:
    from job.config import DataConfig

log = logging.getLogger("job")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "test", "validation")
_NAMED_AT_MOST = 3  # files named in a one-line refusal; the rest are counted


@dataclass(frozen=True)
class FolderEntry:
    path: str  # relative to data.dir
    size: int
    version: str  # job/storage.py list_versions: changes when the file is rewritten
    split: str  # train | test | validation: the folder it is in; "" in the class-folders layout (drawn)
    class_name: str


@dataclass
class FolderListing:
    url: str
    entries: list[FolderEntry]  # sorted by path
    classes: list[str]  # sorted
    has_split_folders: bool


def list_folder(url: str) -> FolderListing:
    """The images under `url` and their classes; a one-line DataError for a layout that cannot be a dataset."""
    if not url.startswith("gs://") and not Path(url).is_dir():
        problem = "is not a folder" if Path(url).exists() else "does not exist"
        raise DataError(f"data.dir={url} {problem}; give the folder holding one subfolder per class "
                        "(DIR/<class>/*.jpg), local or gs://")
    try:
        files = [f for f in open_storage(url).list_versions() if not _hidden(f[0])]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError on disk, google.api_core errors (no bucket, no permission)
        raise DataError(f"cannot list data.dir={url} ({type(e).__name__}: {first_line(e)}); check the path or the "
                        "bucket and its permissions") from None
    images = [f for f in files if f[0].lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise DataError(f"data.dir={url} holds no images ({len(files)} other files); expected DIR/<class>/*.jpg, "
                        f"or DIR/train/<class>/... and DIR/test/<class>/... ({', '.join(IMAGE_EXTENSIONS)})")
    tops = {f[0].split("/")[0] for f in files if "/" in f[0]} | _local_subfolders(url)
    split_layout = "train" in tops and tops <= set(SPLIT_FOLDERS)
    if "train" in tops and not split_layout:
        others = sorted(tops - set(SPLIT_FOLDERS))
        raise DataError(f"data.dir={url} has a train/ folder beside other folders ({_named(others)}); put every class "
                        "folder under train/ (and test/), or rename train/ if it is a class")
    depth = 2 if split_layout else 1  # path parts before the class folder's files
    entries, loose = [], []
    for path, size, version in images:
        parts = path.split("/")
        if len(parts) <= depth:
            loose.append(path)
            continue
        split = parts[0] if split_layout else ""
        entries.append(FolderEntry(path, size, version, split, parts[depth - 1]))
    if loose:
        where = "DIR/<split>/<class>/" if split_layout else "DIR/<class>/"
        raise DataError(f"data.dir={url}: {_named(loose)} not in a class folder; move them into {where} "
                        "(the folder name is the label)")
    # A class folder holding other files only (notes.txt) is a class without images, not a missing class.
    folders = {(p.split("/")[0] if split_layout else "", p.split("/")[depth - 1]) for p, _, _ in files
               if len(p.split("/")) > depth} | _empty_class_folders(url, split_layout)
    classes = _class_names(url, sorted({c for s, c in folders if s in ("", "train")}))
    _check_every_class_has_images(url, folders, entries)
    if split_layout:
        _check_split_classes(url, folders, set(classes))
    return FolderListing(url, entries, classes, split_layout)


def load_folder(cfg: DataConfig, run_dir: str = ""):
    """The folder dataset as Splits (train and test; a validation folder's images as validation), decoded through
    the cache (job/data/decoded.py). `run_dir`: the run it is for (the default cache is inside it, and a resume is
    refused when the folder changed since the run recorded it)."""
    listing = list_folder(cfg.dir)
    key = listing_key(listing.entries, cfg.image_size)
    _refuse_changed_folder_on_resume(run_dir, cfg.dir, key, listing)
    cache_url = cfg.cache_dir or (f"{run_dir.rstrip('/')}/{DECODED_DIR}" if run_dir else "")
    if not cache_url:
        raise DataError("data.name=folder needs data.cache_dir, or a run directory to keep the decoded images in; "
                        "set data.cache_dir")
    return load_or_decode(listing, key, cache_url, cfg, lambda decoded: _assemble(cfg, listing, key, cache_url,
                                                                                  decoded))


def _assemble(cfg: DataConfig, listing: FolderListing, key: str, cache_url: str, decoded: DecodedSet):
    """The Splits of the decoded images; a one-line DataError for a set that cannot be a dataset."""
    from job.data.splits import Splits, stratified_split

    kept = decoded.kept  # indices into listing.entries of the images that decoded
    labels_of = {name: i for i, name in enumerate(listing.classes)}
    labels = np.array([labels_of[listing.entries[i].class_name] for i in kept], np.int32)
    if listing.has_split_folders:
        split = np.array([listing.entries[i].split for i in kept])
        if "test" not in split:
            raise DataError(f"data.dir={cfg.dir} has a train/ folder but no image in test/; add DIR/test/<class>/ "
                            "folders, or put the class folders directly in DIR to have the test split drawn")
    else:
        split = np.full(len(kept), "train", dtype=object)
        _, held = stratified_split(labels, cfg.test_split, cfg.split_seed)
        split[held] = "test"
        split = split.astype(str)
    # Every class must have a training image that decodes, or the model learns a label it never saw.
    counts = np.bincount(labels[split == "train"], minlength=len(listing.classes))
    readable = np.bincount(labels, minlength=len(listing.classes))
    for c in np.flatnonzero(counts == 0):
        name = listing.classes[c]
        if listing.has_split_folders or not readable[c]:
            where = "train/" if listing.has_split_folders else ""
            raise DataError(f"data.dir={cfg.dir}: class folder {where}{name}/ has no readable image (none of its "
                            "files decodes); add readable images to it or remove it")
        raise DataError(f"data.dir={cfg.dir}: class {name!r} has {readable[c]} image(s), all drawn into the test set "
                        f"by data.test_split={cfg.test_split}; add images to {name}/ or lower data.test_split")
    if "validation" in split and cfg.validation_split > 0:
        raise DataError(f"data.dir={cfg.dir} has a validation/ folder and data.validation_split="
                        f"{cfg.validation_split} would draw another; set data.validation_split=0 to use the folder")
    _refuse_shared_images(cfg.dir, listing, kept, split, decoded.sha256)
    train, test, val = (np.flatnonzero(split == s) for s in ("train", "test", "validation"))
    if not len(train) or not len(test):
        raise DataError(f"data.dir={cfg.dir}: {len(kept)} images leave an empty train or test set with "
                        f"data.test_split={cfg.test_split}; add images or change data.test_split")
    record = _run_record(cfg, listing, key, cache_url, decoded, split)
    x, y = decoded.images, labels
    return Splits(select(x, train), y[train], select(x, val) if len(val) else None, y[val] if len(val) else None,
                  select(x, test), y[test],
                  num_classes=len(listing.classes), class_names=list(listing.classes), record=record)


# --- checks --------------------------------------------------------------------------------------------------------
def _class_names(url: str, names: list[str]) -> list[str]:
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a local name that is not UTF-8 comes back with surrogate escapes
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise DataError(f"data.dir={url}: class folder name {shown!r} is not UTF-8, so it cannot be a label; "
                            "rename the folder") from None
        if not name.strip():
            raise DataError(f"data.dir={url}: class folder {name!r} has a name that is empty after trimming spaces; "
                            "rename it to the class's name")
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            raise DataError(f"data.dir={url}: class folders {other!r} and {name!r} differ only in case, which "
                            "labels (and case-insensitive file systems) cannot tell apart; merge or rename one")
    if len(names) < 2:
        raise DataError(f"data.dir={url} has {'one class folder, ' + repr(names[0]) if names else 'no class folder'}"
                        "; a classifier needs at least two classes: add a folder per class")
    return names


def _check_every_class_has_images(url: str, folders: set[tuple[str, str]], entries: list[FolderEntry]) -> None:
    having = {(e.split, e.class_name) for e in entries}
    for split, name in sorted(folders - having):
        where = f"{split}/{name}" if split else name
        raise DataError(f"data.dir={url}: class folder {where}/ has no image file ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add images to it or remove it")


def _check_split_classes(url: str, folders: set[tuple[str, str]], classes: set[str]) -> None:
    for split in ("test", "validation"):
        extra = sorted({c for s, c in folders if s == split} - classes)
        if extra:
            raise DataError(f"data.dir={url}: {split}/ has class folders that train/ lacks ({', '.join(extra)}); "
                            "the model can only learn the classes of train/: add them there or remove them")


def _refuse_shared_images(url: str, listing: FolderListing, kept: np.ndarray, split: np.ndarray,
                          sha256: list[str]) -> None:
    """The same bytes in train and in test (or validation) would make the test measure memory, not skill."""
    train = {}
    for j in np.flatnonzero(split == "train"):
        train.setdefault(sha256[j], listing.entries[kept[j]].path)
    pairs = [(train[sha256[j]], listing.entries[kept[j]].path) for j in np.flatnonzero(split != "train")
             if sha256[j] in train]
    if pairs:
        a, b = pairs[0]
        more = f" (and {len(pairs) - 1} more pairs)" if len(pairs) > 1 else ""
        raise DataError(f"data.dir={url}: the same image is in train and test: {a} and {b}{more}; remove one "
                        "copy, or the test accuracy measures memory")


def _refuse_changed_folder_on_resume(run_dir: str, url: str, key: str, listing: FolderListing) -> None:
    if not run_dir:
        return
    try:
        record = open_storage(run_dir).read_json(DATA_MANIFEST_FILE)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - before the run's storage preflight: the bucket may be unusable
        raise DataError(f"cannot read {run_dir}/{DATA_MANIFEST_FILE} ({type(e).__name__}: {first_line(e)}); check "
                        "run.dir, its bucket and permissions") from None
    if not record or record.get("key") == key:
        return
    before = {f[0]: tuple(f[1:3]) for f in record.get("files", [])}
    now = {e.path: (e.size, e.version) for e in listing.entries}
    added, removed = len(now.keys() - before.keys()), len(before.keys() - now.keys())
    edited = sum(1 for p in now.keys() & before.keys() if now[p] != before[p])
    raise DataError(f"data.dir={url} changed since {run_dir} started (images added: {added}, removed: {removed}, "
                    f"edited: {edited}); resuming would train and test on other images: restore the folder, or start "
                    "a new run.dir")


def _run_record(cfg: DataConfig, listing: FolderListing, key: str, cache_url: str, decoded: DecodedSet,
                split: np.ndarray) -> dict:
    """What the run keeps (layout.DATA_MANIFEST_FILE): where every image went, and what was skipped."""
    split_of = dict(zip(decoded.kept.tolist(), split.tolist()))
    files = [[e.path, e.size, e.version, split_of.get(i, "skipped")] for i, e in enumerate(listing.entries)]
    return {"dir": cfg.dir, "key": key, "cache": f"{cache_url}/{key}", "image_size": cfg.image_size,
            "layout": "split folders" if listing.has_split_folders else "class folders",
            "split_seed": None if listing.has_split_folders else cfg.split_seed,
            "test_split": None if listing.has_split_folders else cfg.test_split,
            "classes": listing.classes, "files": files, "skipped": decoded.skipped}


# --- helpers -------------------------------------------------------------------------------------------------------
def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _local_subfolders(url: str) -> set[str]:
    """Top-level folders (a bucket has no empty folders; a disk does, and an empty class folder is refused)."""
    if url.startswith("gs://"):
        return set()
    return {p.name for p in Path(url).iterdir() if p.is_dir() and not p.name.startswith(".")}


def _empty_class_folders(url: str, split_layout: bool) -> set[tuple[str, str]]:
    if url.startswith("gs://"):
        return set()
    root = Path(url)
    if not split_layout:
        return {("", p.name) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return {(s.name, p.name) for s in root.iterdir() if s.is_dir() and s.name in SPLIT_FOLDERS
            for p in s.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _named(paths: list[str]) -> str:
    more = f" and {len(paths) - _NAMED_AT_MOST} more" if len(paths) > _NAMED_AT_MOST else ""
    return ", ".join(paths[:_NAMED_AT_MOST]) + more
