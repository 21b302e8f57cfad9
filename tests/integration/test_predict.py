"""`python -m job predict` as users run it (a real process on a trained run): a table or JSON per image, Grad-CAM
overlays, folders and gs:// prefixes, one line per file it cannot classify, exit 2 only when none could be."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job.overlay import OVERLAY_SIDE
from tests.support.sample_images import digit_images, encode, rgb_png_bomb, truncated_png
from tests.support.trainer_runs import ROOT, run_job, trainer_env

pytestmark = pytest.mark.usefixtures("digits_run")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """Ten digits in five formats and sizes (a nested folder too), and their labels by file name."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "more").mkdir()
    labels = {}
    formats = [("png", "PNG", {}), ("jpg", "JPEG", {"quality": 95}), ("webp", "WEBP", {"lossless": True}),
               ("bmp", "BMP", {}), ("gif", "GIF", {})]
    for i, (image, label) in enumerate(digit_images(10)):
        suffix, fmt, params = formats[i % len(formats)]
        side = 32 * (1 + i % 4)  # 32 to 128 pixels: the model's size, and larger as photos are
        big = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST))
        name = f"{'more/' if i >= 7 else ''}digit{i}.{suffix}"
        (folder / name).write_bytes(encode(big, fmt, **params))
        labels[str(folder / name)] = label
    return folder, labels


def predict(*args: str, env: dict | None = None):
    return run_job("predict", *args, env=env)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_a_folder_is_classified_as_json_with_top5_names_and_probabilities(digits_run, images):
    folder, labels = images
    result = predict("--run-dir", str(digits_run), "--json", str(folder))
    assert result.returncode == 0, result.stderr
    answers = json_lines(result.stdout)
    assert [a["file"] for a in answers] == sorted(labels)  # every image, recursively, in path order
    for answer in answers:
        top = answer["top"]
        assert len(top) == 5 and [t["class"] for t in top] == [str(t["class_id"]) for t in top]
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-5
    correct = sum(a["top"][0]["class_id"] == labels[a["file"]] for a in answers)
    assert correct >= 8, answers  # the run's test top-1 is about 94 %


def test_the_table_and_one_line_per_file_that_is_not_an_image(digits_run, images, tmp_path):
    folder, labels = images
    first = sorted(labels)[0]
    (tmp_path / "notes.png").write_text("a text file with an image's name\n")
    (tmp_path / "cut.png").write_bytes(truncated_png())
    result = predict("--run-dir", str(digits_run), first, str(tmp_path / "notes.png"), str(tmp_path / "cut.png"))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.strip()]
    assert rows[0].split() == ["file", "top-1", "top-2", "top-3", "top-4", "top-5"] and len(rows) == 2
    name, best, probability = rows[1].split()[:3]
    assert name == (first if len(first) <= 60 else "…" + first[-59:]) and best.isdigit() and probability.endswith("%")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'notes.png'}: not an image Pillow can read (PNG, JPEG, WebP, BMP, GIF, TIFF)",
        f"error: {tmp_path / 'cut.png'}: PNG file is truncated or corrupt (image file is truncated)"]


def test_nothing_classifiable_is_exit_2_and_a_missing_path_is_refused_before_loading(digits_run, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    result = predict("--run-dir", str(digits_run), str(tmp_path / "notes.txt"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: none of the 1 file(s) could be classified (see the lines above)")
    result = predict("--run-dir", str(digits_run), str(tmp_path / "nowhere.png"))
    assert result.returncode == 2 and "loaded" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nowhere.png'} does not exist; give an image file, a folder or a gs:// URL")
    result = predict("--run-dir", str(tmp_path), str(tmp_path / "notes.txt"))
    assert result.returncode == 2 and "is not a run directory" in result.stderr.strip().splitlines()[-1]


# `python -m job` that writes its own peak resident memory (VmHWM: this process image alone; wait4's ru_maxrss would
# carry over the forking pytest's, which holds TensorFlow) to the file in argv[1] as it exits.
PEAK_REPORTING = """
import atexit, sys
from job.cli import main

def report():
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))

atexit.register(report)
code = main(sys.argv[2:])
sys.exit(code)
"""


def run_measuring_peak_memory(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m job ARGS` and its own peak resident memory in MB."""
    with tempfile.TemporaryDirectory() as folder:
        peak = Path(folder) / "peak"
        result = subprocess.run([sys.executable, "-c", PEAK_REPORTING, str(peak), *args], cwd=ROOT, env=trainer_env(),
                                capture_output=True, text=True, timeout=timeout)
        return result, int(peak.read_text()) // 1024


def test_a_decompression_bomb_is_one_line_and_exit_2_without_being_decoded(digits_run, tmp_path):
    """docs/serving.md: an image claiming more than --max-pixels is refused from its header. Decoding this 2.6 MB PNG
    would
    take 3.6 GB (10 GB of peak RSS measured, decoding it without the check)."""
    (tmp_path / "bomb.png").write_bytes(rgb_png_bomb(30_000))
    result, peak_mb = run_measuring_peak_memory("predict", "--run-dir", str(digits_run), str(tmp_path / "bomb.png"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'bomb.png'}: 30000x30000 = 900,000,000 pixels is over the limit of 40,000,000; "
        "scale it down first",
        "error: none of the 1 file(s) could be classified (see the lines above)"]
    assert peak_mb < 1536, f"predict peaked at {peak_mb} MB"  # TensorFlow and the model: about 630 MB here


def test_explain_writes_a_grad_cam_overlay_per_image(digits_run, images, tmp_path):
    folder, labels = images
    result = predict("--run-dir", str(digits_run), "--explain", str(tmp_path / "cam"), str(folder))
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert written == sorted(f"{Path(name).stem}.gradcam.png" for name in labels)
    overlay = np.asarray(Image.open(tmp_path / "cam" / written[0]))
    assert overlay.shape == (OVERLAY_SIDE, OVERLAY_SIDE, 3) and overlay.std() > 10  # a picture, not a blank


def test_exported_model_and_best_checkpoint_give_the_same_answers(digits_run, images):
    folder, _ = images
    by_run = json_lines(predict("--run-dir", str(digits_run), "--json", str(folder)).stdout)
    for args in (("--model", str(digits_run / "export/model.keras")), ("--model", str(digits_run / "export/model.h5"))):
        result = predict(*args, "--json", str(folder))
        assert result.returncode == 0, result.stderr
        assert json_lines(result.stdout) == by_run, args
    result = predict("--run-dir", str(digits_run), "--checkpoint", "best", "--json", "--top", "1", str(folder))
    assert result.returncode == 0 and "best checkpoint (step" in result.stderr
    assert all(len(a["top"]) == 1 for a in json_lines(result.stdout))


def test_a_gs_run_and_a_gs_prefix_of_images(digits_run, images, gcs_bucket):
    """The run and the images in a bucket (fake-gcs-server), as on the cluster: nothing read from local disk."""
    from job.storage import open_storage

    folder, labels = images
    run = open_storage(f"{gcs_bucket}/run")
    for file in digits_run.rglob("*"):
        if file.is_file():
            run.put_file(file, file.relative_to(digits_run).as_posix())
    pictures = open_storage(f"{gcs_bucket}/pictures")
    for name in labels:
        pictures.put_file(name, Path(name).relative_to(folder).as_posix())
    env = trainer_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    first = sorted(labels)[0]
    one = f"{gcs_bucket}/pictures/{Path(first).relative_to(folder).as_posix()}"
    result = predict("--run-dir", f"{gcs_bucket}/run", "--json", f"{gcs_bucket}/pictures", one, env=env)
    assert result.returncode == 0, result.stderr
    local = json_lines(predict("--run-dir", str(digits_run), "--json", str(folder), first).stdout)
    remote = json_lines(result.stdout)
    assert [a["file"] for a in remote] == [f"{gcs_bucket}/pictures/{Path(a['file']).relative_to(folder).as_posix()}"
                                           for a in local]
    assert [a["top"] for a in remote] == [a["top"] for a in local]
