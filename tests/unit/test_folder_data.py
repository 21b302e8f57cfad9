"""data.name=folder without TensorFlow: layouts, the split, the decoded cache and its lock, and every bad input
(docs/own-images.md)."""
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job import images
from job.config import load_config
from job.data import decoded as decodedlib
from job.data import load_splits
from job.data.to_folder import export_dataset
from job.errors import DataError, UserError
from job.layout import DATA_MANIFEST_FILE


def write_png(path: Path, seed: int, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG")
    return path


def class_folders(root: Path, classes=("cat", "dog"), per_class: int = 10, seed: int = 0) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_png(root / name / f"{i:03d}.png", seed=seed + 1000 * c + i)
    return root


def folder_cfg(root, cache, *overrides):
    return load_config("digits_resnet20", ["data.name=folder", f"data.dir={root}", f"data.cache_dir={cache}",
                                           "data.validation_split=0", *overrides]).data


@pytest.fixture(scope="module")
def exported_digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits"
    assert export_dataset("digits", str(out)) == 1797
    return out


def images_by_label(x, y):
    return sorted((int(label), image.tobytes()) for image, label in zip(x, y))


# --- layouts -------------------------------------------------------------------------------------------------------
def test_exported_digits_load_as_the_same_images_labels_and_split_as_the_built_in_set(exported_digits, tmp_path):
    folder = load_splits(folder_cfg(exported_digits, tmp_path / "cache"), seed=0)
    builtin = load_splits(load_config("digits_resnet20", ["data.validation_split=0"]).data, seed=0)
    assert folder.class_names == builtin.class_names == [str(d) for d in range(10)]
    assert images_by_label(folder.x_train, folder.y_train) == images_by_label(builtin.x_train, builtin.y_train)
    assert images_by_label(folder.x_test, folder.y_test) == images_by_label(builtin.x_test, builtin.y_test)
    assert folder.record["layout"] == "split folders" and folder.record["split_seed"] is None


def test_class_folders_get_a_stratified_test_split_by_split_seed_recorded_with_every_file(tmp_path):
    root = class_folders(tmp_path / "pets", classes=("b_dog", "a_cat", "c_fox"), per_class=10)
    cfg = folder_cfg(root, tmp_path / "cache", "data.test_split=0.3", "data.split_seed=7")
    splits = load_splits(cfg, seed=0)
    assert splits.class_names == ["a_cat", "b_dog", "c_fox"]  # sorted folder names are the labels
    assert np.bincount(splits.y_test).tolist() == [3, 3, 3] and np.bincount(splits.y_train).tolist() == [7, 7, 7]
    record = splits.record
    assert record["split_seed"] == 7 and record["layout"] == "class folders"
    test_files = sorted(f[0] for f in record["files"] if f[3] == "test")
    # The split is the recorded one, image for image: a_cat/... files decode to exactly the test images of label 0.
    expected = [images.decode((root / p).read_bytes(), 32) for p in test_files if p.startswith("a_cat/")]
    assert images_by_label(splits.x_test[splits.y_test == 0], [0] * 3) == images_by_label(expected, [0] * 3)
    # Another seed draws another test set; train.seed does not move it.
    other = load_splits(folder_cfg(root, tmp_path / "cache", "data.test_split=0.3", "data.split_seed=8"), seed=0)
    assert sorted(f[0] for f in other.record["files"] if f[3] == "test") != test_files
    same = load_splits(cfg, seed=5)
    assert sorted(f[0] for f in same.record["files"] if f[3] == "test") == test_files


def test_a_validation_folder_is_the_validation_set(tmp_path):
    root = tmp_path / "d"
    for split, count in (("train", 6), ("test", 2), ("validation", 3)):
        class_folders(root / split, per_class=count, seed={"train": 0, "test": 100, "validation": 200}[split])
    splits = load_splits(folder_cfg(root, tmp_path / "cache"), seed=0)
    assert (len(splits.x_train), len(splits.x_test), len(splits.x_val)) == (12, 4, 6)
    with pytest.raises(DataError, match="data.validation_split=0 to use the folder"):
        load_splits(folder_cfg(root, tmp_path / "cache", "data.validation_split=0.2"), seed=0)


def test_sklearn_photos_decode_upright_centre_cropped_and_antialiased(tmp_path):
    """scikit-learn's bundled JPEG photos (427x640), one of them stored sideways with an EXIF orientation tag."""
    import sklearn.datasets

    photos = Path(sklearn.datasets.__file__).parent / "images"
    root = tmp_path / "photos"
    for name in ("china", "flower"):
        (root / name).mkdir(parents=True)
        shutil.copy(photos / f"{name}.jpg", root / name / "upright.jpg")
    # flower turned 90 degrees on disk, tagged "rotate 90 CW to display" (orientation 6): must decode as upright
    upright = Image.open(photos / "flower.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(root / "flower" / "sideways.jpg", quality=95, exif=exif)
    # three images, one drawn as the test set (flower's: china's only image must stay in train)
    splits = load_splits(folder_cfg(root, tmp_path / "cache", "data.test_split=0.34"), seed=0)
    x = np.concatenate([splits.x_train, splits.x_test])
    y = np.concatenate([splits.y_train, splits.y_test])
    for label, name in enumerate(("china", "flower")):
        source = Image.open(photos / f"{name}.jpg").convert("RGB")
        side = min(source.size)
        left, top = (source.width - side) // 2, (source.height - side) // 2
        want = np.asarray(source.crop((left, top, left + side, top + side)).resize((32, 32), Image.LANCZOS), np.int16)
        got = x[y == label].astype(np.int16)
        assert got.shape == (2 if name == "flower" else 1, 32, 32, 3)
        for image in got:  # JPEG re-encoding of the sideways copy costs a few levels, a wrong rotation far more
            assert np.abs(image - want).mean() < 3, name


# --- the decoded cache ---------------------------------------------------------------------------------------------
def test_a_second_load_uses_the_decoded_cache_and_a_changed_folder_is_decoded_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="job")
    root = class_folders(tmp_path / "pets")
    cfg = folder_cfg(root, tmp_path / "cache")
    first = load_splits(cfg, seed=0)
    assert "decoding 20 images" in caplog.text
    caplog.clear()
    again = load_splits(cfg, seed=0)
    assert "using the decoded cache" in caplog.text and "decoding" not in caplog.text
    np.testing.assert_array_equal(again.x_train, first.x_train)
    # The shards are what is read: a damaged one is refused, not decoded around.
    (shard,) = (tmp_path / "cache").glob("*/shard-00000.npy")
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="does not match its checksum"):
        load_splits(cfg, seed=0)
    # A file edited: another listing, another key, decoded again for a new run.
    caplog.clear()
    write_png(root / "cat" / "000.png", seed=999)
    changed = load_splits(cfg, seed=0)
    assert "decoding 20 images" in caplog.text and len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.array_equal(np.concatenate([changed.x_train, changed.x_test]).sum(),
                              np.concatenate([first.x_train, first.x_test]).sum())


def test_a_resume_refuses_a_folder_changed_since_the_run_recorded_it(tmp_path):
    root, run = class_folders(tmp_path / "pets"), tmp_path / "run"
    cfg = folder_cfg(root, "")  # the default cache: decoded/ in the run
    splits = load_splits(cfg, seed=0, run_dir=str(run))
    assert list((run / "decoded").glob("*/manifest.json"))
    run.joinpath(DATA_MANIFEST_FILE).write_text(json.dumps(splits.record))  # what the trainer keeps (builder.py)
    load_splits(cfg, seed=0, run_dir=str(run))  # unchanged: resumes
    write_png(root / "dog" / "new.png", seed=5)
    (root / "cat" / "001.png").unlink()
    with pytest.raises(DataError) as refused:
        load_splits(cfg, seed=0, run_dir=str(run))
    assert "changed since" in str(refused.value) and "images added: 1, removed: 1, edited: 0" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_waiters_use_the_images_another_process_decodes_and_take_over_a_dead_decoders_lock(tmp_path, caplog,
                                                                                          monkeypatch):
    caplog.set_level(logging.INFO, logger="job")
    root = class_folders(tmp_path / "pets")
    load_splits(folder_cfg(root, tmp_path / "done"), seed=0)  # a finished cache to hand over later
    (key_dir,) = (tmp_path / "done").iterdir()
    shared = tmp_path / "shared" / key_dir.name
    shared.mkdir(parents=True)
    lock = shared / decodedlib.LOCK

    def beat(n):  # another host's decoder, alive while its beat changes
        lock.write_text(json.dumps({"id": "other", "host": "elsewhere", "pid": 1, "beat": n, "done": n,
                                    "total": 20}))

    beat(0)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(splits=load_splits(
        folder_cfg(root, tmp_path / "shared"), seed=0)))
    waiter.start()
    deadline, n = time.monotonic() + 60, 0
    while "waiting for elsewhere pid 1" not in caplog.text:
        assert time.monotonic() < deadline and waiter.is_alive()
        n += 1
        beat(n)
        time.sleep(0.05)
    for shard in key_dir.glob("shard-*"):  # the other decoder finishes: shards, then the manifest
        shutil.copy(shard, shared / shard.name)
    shutil.copy(key_dir / "manifest.json", shared / "manifest.json")
    lock.unlink()
    waiter.join(timeout=60)
    assert "splits" in result and "decoding 20" not in caplog.text.split("waiting for")[1]
    assert "using the decoded cache" in caplog.text

    # A lock whose heartbeat stopped is taken over after LOCK_STALE_SECONDS, and this process decodes.
    monkeypatch.setattr(decodedlib, "LOCK_STALE_SECONDS", 0.5)
    caplog.clear()
    stale = tmp_path / "stale" / key_dir.name
    stale.mkdir(parents=True)
    (stale / decodedlib.LOCK).write_text(json.dumps({"id": "gone", "host": "elsewhere", "pid": 1, "beat": 3}))
    load_splits(folder_cfg(root, tmp_path / "stale"), seed=0)
    assert "stopped; taking over" in caplog.text and "decoding 20 images" in caplog.text
    assert not (stale / decodedlib.LOCK).exists() and (stale / "manifest.json").exists()


# --- bad inputs: one line each, nothing decoded into the cache ----------------------------------------------------
def refused(root, tmp_path, *overrides, match: str) -> str:
    with pytest.raises(UserError) as error:
        load_splits(folder_cfg(root, tmp_path / "cache", *overrides), seed=0)
    message = str(error.value)
    assert "\n" not in message and match in message, message
    assert not list((tmp_path / "cache").glob("*/manifest.json")), "a refused folder left a cache behind"
    return message


def test_a_missing_or_empty_folder_is_refused(tmp_path):
    refused(tmp_path / "nowhere", tmp_path, match="does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    refused(tmp_path / "empty", tmp_path, match="holds no images")


def test_a_class_left_without_training_images_by_the_drawn_split_is_refused(tmp_path):
    root = class_folders(tmp_path / "d", per_class=4)
    # One image: its quantile in its class is 0.5; 5 of 9 held out take the four lowest of the others and it.
    write_png(root / "a_rare" / "only.png", seed=77)
    refused(root, tmp_path, "data.test_split=0.6", match="class 'a_rare' has 1 image(s), all drawn into the test set")


def test_one_class_only_is_refused(tmp_path):
    refused(class_folders(tmp_path / "d", classes=("cat",)), tmp_path, match="at least two classes")


def test_a_class_folder_without_an_image_is_refused(tmp_path):
    root = class_folders(tmp_path / "d")
    (root / "fox").mkdir()
    refused(root, tmp_path, match="class folder fox/ has no image file")
    (root / "fox" / "readme.txt").write_text("soon")
    refused(root, tmp_path, match="class folder fox/ has no image file")
    (root / "fox" / "a.png").write_bytes(b"not a png")
    refused(root, tmp_path, "data.max_unreadable_fraction=0.5", match="class folder fox/ has no readable image")
    # split folders: a class whose training images all fail is refused even with readable test images
    split_root = tmp_path / "split"
    class_folders(split_root / "train", per_class=6)
    class_folders(split_root / "test", per_class=2, seed=300)
    for path in (split_root / "train" / "dog").iterdir():
        path.write_bytes(b"broken")
    refused(split_root, tmp_path, "data.max_unreadable_fraction=0.5",
            match="class folder train/dog/ has no readable image")


def test_undecodable_images_over_the_share_are_refused_naming_the_first_few(tmp_path):
    root = class_folders(tmp_path / "d")
    for i in range(5):
        (root / "cat" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    message = refused(root, tmp_path, match="5 of 25 images cannot be decoded")
    assert "cat/broken0.jpg" in message and "cat/broken2.jpg" in message and "and 2 more" in message
    assert "data.max_unreadable_fraction" in message


def test_undecodable_images_under_the_share_are_skipped_and_listed(tmp_path, caplog):
    root = class_folders(tmp_path / "d")
    (root / "dog" / "cut.png").write_bytes((root / "dog" / "000.png").read_bytes()[:60])
    splits = load_splits(folder_cfg(root, tmp_path / "cache", "data.max_unreadable_fraction=0.1"), seed=0)
    assert len(splits.x_train) + len(splits.x_test) == 20
    assert [p for p, _ in splits.record["skipped"]] == ["dog/cut.png"]
    assert [f[3] for f in splits.record["files"] if f[0] == "dog/cut.png"] == ["skipped"]
    assert "skipping 1 of 21 images that cannot be decoded (dog/cut.png)" in caplog.text


def test_the_same_image_in_train_and_test_is_refused(tmp_path):
    root = tmp_path / "d"
    class_folders(root / "train", per_class=4)
    class_folders(root / "test", per_class=2, seed=500)
    shutil.copy(root / "train" / "dog" / "002.png", root / "test" / "dog" / "copy.png")
    refused(root, tmp_path, match="the same image is in train and test: train/dog/002.png and test/dog/copy.png")


def test_an_image_over_the_pixel_limit_is_refused(tmp_path):
    root = class_folders(tmp_path / "d")
    write_png(root / "dog" / "huge.png", seed=1, size=300)
    refused(root, tmp_path, "data.max_pixels=50000", match="dog/huge.png has 90,000 pixels, over data.max_pixels")


def test_a_folder_over_the_memory_limit_is_refused_before_decoding_when_streaming_is_off(tmp_path):
    # 20 images at 32x32x3 = 61,440 bytes decoded (docs/own-images.md: Streaming; with data.stream=auto it streams:
    # tests/integration/test_folder_stream.py)
    message = refused(class_folders(tmp_path / "d"), tmp_path, "data.max_decoded_gb=0.00005", "data.stream=never",
                      match="20 images at 32x32 take 61.4 kB decoded, over data.max_decoded_gb=5e-05 with "
                            "data.stream=never")
    assert "set data.stream=auto to stream them" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("names, match", [
    (("cat", "   "), "empty after trimming"),
    (("Cat", "cat"), "differ only in case"),
])
def test_class_folder_names_that_cannot_be_labels_are_refused(tmp_path, names, match):
    refused(class_folders(tmp_path / "d", classes=names), tmp_path, match=match)


def test_a_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    root = class_folders(tmp_path / "d")
    bad = root / b"caf\xe9".decode("utf-8", "surrogateescape")  # Latin-1 "cafe" with an accent
    try:
        bad.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    write_png(bad / "a.png", seed=3)
    refused(root, tmp_path, match="is not UTF-8")


def test_a_train_folder_beside_class_folders_is_refused(tmp_path):
    class_folders(tmp_path / "d" / "train")
    class_folders(tmp_path / "d", classes=("fox",))
    refused(tmp_path / "d", tmp_path, match="has a train/ folder beside other folders (fox)")


def test_loose_images_outside_class_folders_are_refused(tmp_path):
    root = class_folders(tmp_path / "d")
    write_png(root / "stray.png", seed=4)
    refused(root, tmp_path, match="stray.png not in a class folder")


@pytest.mark.parametrize("override, match", [
    ("data.image_size=600", "data.image_size must be in [8, 512]"),
    ("data.test_split=1", "data.test_split must be in (0, 1)"),
    ("data.max_unreadable_fraction=-0.1", "data.max_unreadable_fraction must be in [0, 1)"),
])
def test_folder_keys_are_range_checked(override, match):
    with pytest.raises(UserError, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config("digits_resnet20", ["data.name=folder", "data.dir=x", override])


def test_folder_only_keys_are_refused_for_other_datasets():
    with pytest.raises(UserError, match="data.split_seed=3 only applies to data.name=folder"):
        load_config("digits_resnet20", ["data.split_seed=3"])
    with pytest.raises(UserError, match="data.image_size=64 is for data.name=folder; digits's images are 32x32"):
        load_config("digits_resnet20", ["data.image_size=64"])


def test_gcn_zca_and_cutout_are_checked_against_the_image_size():
    folder = ["data.name=folder", "data.dir=x"]
    with pytest.raises(UserError, match="gcn_zca .* it is for 32 only; use standardize"):
        load_config("digits_resnet20", [*folder, "data.image_size=64", "data.normalization=gcn_zca"])
    with pytest.raises(UserError, match=r"data.augment.cutout must be in \[0, 16\)"):
        load_config("digits_resnet20", [*folder, "data.image_size=16", "data.augment.cutout=20"])
    assert load_config("digits_resnet20", [*folder, "data.image_size=64", "data.augment.cutout=40"])


def test_a_folder_decodes_at_data_image_size(tmp_path):
    root = class_folders(tmp_path / "pets")
    splits = load_splits(folder_cfg(root, tmp_path / "cache", "data.image_size=24"), seed=0)
    assert splits.x_train.shape[1:] == splits.x_test.shape[1:] == (24, 24, 3)
    path = sorted(f[0] for f in splits.record["files"] if f[3] == "test")[0]
    want = images.decode((root / path).read_bytes(), 24)
    assert any(np.array_equal(want, x) for x in splits.x_test)
