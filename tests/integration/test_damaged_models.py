"""Damaged model files and checkpoints given to predict, serve and evaluate (issue 22).

An exported model (`--model`) that is truncated or has bytes changed is refused in one line with exit 2, before
TensorFlow is imported: by the SHA-256 the export writes into model_card.json, or without a card by the file's own
structure (a .keras zip's CRC-32s, an .h5 superblock's length). A run whose newest committed checkpoint is damaged is
read from the newest one that verifies, with a warning naming the damaged one (as training resumes); if none verifies,
one line says so. Nothing is deleted or rewritten.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.support.serve_server import ServeProcess, digit_images, get, png_bytes
from tests.support.trainer_runs import committed_steps, free_loopback_ports, run_job

DAMAGES = ("truncated", "flipped")


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    else:  # a run of changed bytes in the middle, the length kept
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "digit.png"
    path.write_bytes(png_bytes(digit_images()[0][0]))
    return path


def test_the_export_records_each_model_file_checksum(digits_run):
    export = digits_run / "export"
    card = json.loads((export / "model_card.json").read_text())
    for name in ("model.keras", "model.h5"):
        data = (export / name).read_bytes()
        assert card["checksums"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# Not tried: a flipped byte in an .h5 without its card. HDF5 has no checksum of its own: only the card's SHA-256
# catches a changed weight byte (docs/serving.md, "Exports"), so that file loads.
CASES = [pytest.param(name, how, card, id=f"{'card' if card else 'no card'}-{how}-{name}")
         for card in (True, False) for how in DAMAGES for name in ("model.keras", "model.h5")
         if (name, how, card) != ("model.h5", "flipped", False)]


@pytest.mark.parametrize("name, how, with_card", CASES)
def test_a_damaged_model_file_is_one_line_and_exit_2(digits_run, image, tmp_path, name, how, with_card):
    shutil.copy(digits_run / "export" / name, tmp_path / name)
    if with_card:
        shutil.copy(digits_run / "export" / "model_card.json", tmp_path / "model_card.json")
    damage(tmp_path / name, how)
    before = tree_digest(tmp_path)
    model = str(tmp_path / name)
    port = str(free_loopback_ports(1)[0])
    for command in (["predict", "--model", model, str(image)], ["serve", "--model", model, "--port", port]):
        result = run_job(*command, timeout=120)
        assert result.returncode == 2, (command, result.stderr[-3000:])
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, (command, result.stderr[-3000:])
        assert result.stderr.startswith(f"error: --model {model} is damaged or truncated ("), result.stderr
    assert tree_digest(tmp_path) == before


@pytest.fixture(scope="module")
def newest_damaged(digits_run, tmp_path_factory) -> tuple[Path, int, int]:
    """A copy of the digits run whose newest committed checkpoint has a changed byte: (run, newest, previous)."""
    run = tmp_path_factory.mktemp("newest_damaged") / "run"
    shutil.copytree(digits_run, run)
    *_, previous, newest = committed_steps(run)
    for data in (run / "checkpoints").glob(f"ckpt-{newest}-*.data-*"):
        damage(data, "flipped")
    return run, newest, previous


def assert_fell_back(log: str, run: Path, newest: int, previous: int) -> None:
    warnings = [line for line in log.splitlines() if "is damaged" in line]
    assert len(warnings) == 1, log[-3000:]
    assert f"checkpoints/ckpt-{newest} is damaged" in warnings[0] and f"using ckpt-{previous} instead" in warnings[0]


def test_predict_and_evaluate_fall_back_from_a_damaged_newest_checkpoint(newest_damaged, image):
    run, newest, previous = newest_damaged
    before = tree_digest(run / "checkpoints")
    predicted = run_job("predict", "--run-dir", str(run), "--json", str(image), timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert_fell_back(predicted.stderr, run, newest, previous)
    assert f"latest checkpoint (step {previous})" in predicted.stderr
    assert json.loads(predicted.stdout)["file"] == str(image)

    evaluated = run_job("evaluate", "--run-dir", str(run), timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert_fell_back(evaluated.stderr, run, newest, previous)
    assert json.loads((run / "eval" / "metrics.json").read_text())["step"] == previous
    assert tree_digest(run / "checkpoints") == before, "a reader never deletes or rewrites a damaged checkpoint"


def test_serve_falls_back_from_a_damaged_newest_checkpoint(newest_damaged, tmp_path):
    run, newest, previous = newest_damaged
    server = ServeProcess.start(["--run-dir", str(run)], log_path=tmp_path / "serve.log")
    try:
        server.wait_ready(timeout=300)
        model = get(server.url + "/v1/model")
    finally:
        server.stop()
    assert model.status == 200 and f"(step {previous})" in model.json["weights"], model.body
    assert_fell_back(server.log(), run, newest, previous)


def test_every_checkpoint_damaged_is_one_line_everywhere(digits_run, image, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        damage(data, "flipped")
    before = tree_digest(run / "checkpoints")
    names = ", ".join(f"ckpt-{step}" for step in committed_steps(run))
    phrase = f"{run} has no usable checkpoint: {names} failed verification (see the warnings above)"
    for command in (["predict", "--run-dir", str(run), str(image)], ["evaluate", "--run-dir", str(run)],
                    ["predict", "--run-dir", str(run), "--checkpoint", "best", str(image)]):
        result = run_job(*command, timeout=600)
        assert result.returncode == 2, (command, result.stderr[-3000:])
        assert error_lines(result) == [f"error: {phrase}; restore checkpoints/ from a copy, or train again into a "
                                       f"new run.dir"], (command, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
    server = ServeProcess.start(["--run-dir", str(run)], log_path=tmp_path / "serve.log")
    try:
        # docs/serving.md: a load that fails ends the process (Kubernetes restarts it)
        code = server.process.wait(timeout=300)
    finally:
        server.stop()
    failures = [line for line in server.log().splitlines() if "could not load the model" in line]
    assert code == 2 and len(failures) == 1 and phrase in failures[0], server.log()[-3000:]
    assert tree_digest(run / "checkpoints") == before


def test_evaluate_a_damaged_checkpoint_prefix_given_by_hand_is_one_line(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    index = sorted((run / "checkpoints").glob("ckpt-*.index"))[-1]
    prefix = str(index)[:-len(".index")]
    damage(next((run / "checkpoints").glob(f"{index.stem}.data-*")), "flipped")
    result = run_job("evaluate", "--run-dir", str(run), "--checkpoint", prefix, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert line.startswith(f"error: checkpoint {prefix} cannot be read (") and "Checksum does not match" in line
    assert "Traceback" not in result.stderr
