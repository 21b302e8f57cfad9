"""Small CIFAR archives in exactly the official python-version format, for tests (no CIFAR data on these machines).

Same member names, dict keys (bytes, as `pickle.load(f, encoding='bytes')` returns them for the Python 2 originals),
dtypes and layout: b'data' is a uint8 (N, 3072) array, each row the red, green and blue 32x32 planes in row-major
order; labels are Python lists of ints. Class names and the CIFAR-100 superclass mapping are the real ones.
Images are noise around a per-class colour, so a model can learn them. Each writer returns the archive's MD5.

    md5 = write_cifar10_archive(tmp_path, n_train=100, n_test=50)
    cfg = DataConfig(name="cifar10", dir=str(tmp_path), download=False, md5=md5)
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_COARSE = sorted(CIFAR100_SUPERCLASSES)  # the meta lists both name sets alphabetically
CIFAR100_FINE = sorted(n for names in CIFAR100_SUPERCLASSES.values() for n in names)
CIFAR100_FINE_TO_COARSE = np.array(
    [next(CIFAR100_COARSE.index(c) for c, names in CIFAR100_SUPERCLASSES.items() if fine in names)
     for fine in CIFAR100_FINE])


def write_cifar10_archive(directory, n_train: int = 100, n_test: int = 50, seed: int = 0,
                          replace: dict[str, bytes] | None = None, omit: tuple[str, ...] = ()) -> str:
    """cifar-10-python.tar.gz with n_train examples over data_batch_1..5 and n_test in test_batch; returns its MD5.

    `replace` swaps a member's bytes (e.g. {"test_batch": b"junk"}), `omit` leaves members out: for failure tests.
    """
    rng = np.random.default_rng(seed)
    members: dict[str, object] = {}
    y_train = _labels(rng, n_train, 10)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        members[f"data_batch_{i}"] = _batch(rng, y_train[part], 10, f"training batch {i} of 5", {b"labels": None})
    members["test_batch"] = _batch(rng, _labels(rng, n_test, 10), 10, "testing batch 1 of 1", {b"labels": None})
    members["batches.meta"] = {
        b"num_cases_per_batch": max(1, n_train // 5),
        b"label_names": [n.encode() for n in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    return _write(Path(directory) / "cifar-10-python.tar.gz", "cifar-10-batches-py", members, replace, omit)


def write_cifar100_archive(directory, n_train: int = 200, n_test: int = 100, seed: int = 0,
                           replace: dict[str, bytes] | None = None, omit: tuple[str, ...] = ()) -> str:
    """cifar-100-python.tar.gz (members train, test, meta); returns its MD5.

    Labels cycle through the 100 classes, so with n_train >= 100 every class (and its superclass pair) occurs.
    """
    rng = np.random.default_rng(seed)
    members: dict[str, object] = {}
    for name, n, label in (("train", n_train, "training"), ("test", n_test, "testing")):
        fine = _labels(rng, n, 100)
        members[name] = _batch(rng, fine, 100, f"{label} batch 1 of 1",
                               {b"fine_labels": None, b"coarse_labels": CIFAR100_FINE_TO_COARSE})
    members["meta"] = {
        b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE],
    }
    return _write(Path(directory) / "cifar-100-python.tar.gz", "cifar-100-python", members, replace, omit)


def cifar_rows_to_nhwc(data: np.ndarray) -> np.ndarray:
    """The official row layout back to NHWC images (what a correct loader must produce)."""
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


def _batch(rng: np.random.Generator, labels: np.ndarray, num_classes: int, batch_label: str,
           label_keys: dict[bytes, np.ndarray | None]) -> dict:
    colours = np.random.default_rng(1234).integers(40, 216, size=(num_classes, 3))
    noise = rng.integers(-40, 41, size=(len(labels), 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    batch = {
        b"batch_label": batch_label.encode(),
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)),
        b"filenames": [f"image_{int(rng.integers(1 << 30)):010d}.png".encode() for _ in labels],
    }
    for key, mapping in label_keys.items():
        values = labels if mapping is None else mapping[labels]
        batch[key] = [int(v) for v in values]
    return batch


def _write(path: Path, folder: str, members: dict[str, object], replace: dict[str, bytes] | None,
           omit: tuple[str, ...]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo(folder)
        top.type, top.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(top)
        for name, content in members.items():
            if name in omit:
                continue
            raw = (replace or {}).get(name)
            if raw is None:
                raw = pickle.dumps(content, protocol=2)  # the originals are Python 2 pickles
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    return hashlib.md5(path.read_bytes()).hexdigest()
