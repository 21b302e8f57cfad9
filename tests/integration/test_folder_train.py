"""End to end on a folder of real images nobody here drew: scikit-learn's digits, written as PNG class folders by
`python -m job export-data`, trained by the real CLI as a process (docs/own-images.md)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job.storage import open_storage
from tests.integration.test_train import final_variables
from tests.support.trainer_runs import kill_hard, run_job, start_job, trainer_env, wait_for

pytestmark = pytest.mark.slow

# The built-in digits run and the folder run train with the same short settings (about a minute each on a CPU);
# deterministic ops, so each run's accuracy is the same on every try and the comparison cannot be luck.
ACCURACY = ["--config", "digits_resnet20", "model.name=simple_cnn", "optim.lr=0.02", "train.epochs=8",
            "train.seed=3", "train.deterministic=true"]
# tests/integration/test_train.py's TINY (every kind of state a resume restores), on the folder.
TINY = ["--config", "digits_resnet20", "model.name=simple_cnn", "model.dropout=0.25", "train.epochs=2",
        "train.batch_size=32", "train.deterministic=true", "checkpoint.every_steps=5", "optim.warmup_epochs=0.5"]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "digits"
    result = run_job("export-data", "digits", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(out.glob("train/*/*.png"))) == 1438 and len(list(out.glob("test/*/*.png"))) == 359
    return out


def folder(path) -> list[str]:
    return ["data.name=folder", f"data.dir={path}"]


def trained(run_dir, *args, env=None) -> subprocess.CompletedProcess:
    result = run_job("train", *args, f"run.dir={run_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def builtin_top1(tmp_path_factory) -> float:
    run_dir = tmp_path_factory.mktemp("builtin") / "run"
    trained(run_dir, *ACCURACY)
    return json.loads((run_dir / "eval" / "metrics.json").read_text())["top1"]


def test_a_folder_run_of_the_exported_digits_reaches_the_built_in_runs_accuracy(digits_folder, builtin_top1,
                                                                                 tmp_path):
    run_dir = tmp_path / "run"
    result = trained(run_dir, *ACCURACY, *folder(digits_folder))
    assert "decoding 1797 images" in result.stderr
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 359  # the exported test split, kept
    assert abs(metrics["top1"] - builtin_top1) <= 0.01, (metrics["top1"], builtin_top1)
    assert metrics["top1"] >= 0.95
    assert json.loads((run_dir / "classes.json").read_text())["classes"] == [str(d) for d in range(10)]
    record = json.loads((run_dir / "data_manifest.json").read_text())
    assert {f[3] for f in record["files"]} == {"train", "test"} and len(record["files"]) == 1797
    assert list((run_dir / "decoded").glob("*/manifest.json"))  # the default cache: inside the run

    # `evaluate` reads the same images from the run's cache and reproduces the stored numbers.
    again = run_job("evaluate", "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "using the decoded cache" in again.stderr and "decoding" not in again.stderr
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["top1"] == pytest.approx(metrics["top1"])


def test_a_folder_in_a_bucket_trains_into_a_run_in_the_bucket(digits_folder, builtin_top1, gcs_server, gcs_bucket,
                                                              tmp_path):
    bucket = open_storage(gcs_bucket)
    for path in sorted(digits_folder.rglob("*.png")):
        bucket.write_bytes(f"digits/{path.relative_to(digits_folder).as_posix()}", path.read_bytes())
    url = f"{gcs_bucket}/run"
    result = trained(url, *ACCURACY, *folder(f"{gcs_bucket}/digits"), f"run.work_dir={tmp_path / 'work'}",
                     env=trainer_env(**gcs_server.env()))
    assert "decoding 1797 images" in result.stderr
    metrics = bucket.read_json("run/eval/metrics.json")
    assert abs(metrics["top1"] - builtin_top1) <= 0.01, (metrics["top1"], builtin_top1)
    assert [n for n in bucket.list("run/decoded/") if n.endswith("/manifest.json")]


@pytest.fixture(scope="module")
def straight_folder_run(digits_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    trained(run_dir, *TINY, *folder(digits_folder))
    return run_dir


# docs/own-images.md "Streaming": a streamed run reads the same batches, so it resumes exactly too, and ends with the
# weights of the uninterrupted in-memory run.
@pytest.mark.parametrize("stream", [[], ["data.stream=always"]], ids=["in_memory", "streamed"])
def test_kill_minus_nine_then_resume_uses_the_cache_and_ends_with_the_uninterrupted_weights(
        digits_folder, straight_folder_run, tmp_path, stream):
    resumed, log = tmp_path / "resumed", tmp_path / "first.log"
    # As tests/integration/test_train.py: ckpt-10's commit held, so the kill lands mid-epoch with ckpt-5 the newest
    # commit.
    process = start_job("train", *TINY, *folder(digits_folder), *stream, f"run.dir={resumed}", log_path=log,
                        env=trainer_env(JOB_TEST_HOLD_TASK=r"^checkpoint ckpt-10$"))
    wait_for(lambda: "held for a test: checkpoint ckpt-10" in log.read_text(), timeout=300, process=process,
             what="the commit of ckpt-10 to be held")
    kill_hard(process)
    assert "decoding 1797 images" in log.read_text()
    assert ("streaming the decoded images" in log.read_text()) == bool(stream)

    again = trained(resumed, *TINY, *folder(digits_folder), *stream)
    assert "resuming from step 5" in again.stderr
    assert "using the decoded cache" in again.stderr and "decoding" not in again.stderr
    step_a, weights_a = final_variables(straight_folder_run)
    step_b, weights_b = final_variables(resumed)
    assert step_a == step_b and weights_a.keys() == weights_b.keys()
    for name in weights_a:
        np.testing.assert_allclose(weights_b[name], weights_a[name], rtol=1e-6, atol=1e-7, err_msg=name)

    # The folder changed since: the same command is refused in one line, the run untouched.
    (digits_folder / "test" / "3" / "00011.png").rename(digits_folder / "test" / "3" / "renamed.png")
    try:
        refused = run_job("train", *TINY, *folder(digits_folder), f"run.dir={resumed}")
    finally:
        (digits_folder / "test" / "3" / "renamed.png").rename(digits_folder / "test" / "3" / "00011.png")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "changed since" in refused.stderr and "images added: 1, removed: 1, edited: 0" in refused.stderr


TWO_WORKERS = [*TINY[:2], "model.name=simple_cnn", "train.epochs=1", "train.max_steps_per_epoch=6",
               "train.batch_size=32", "distribute.collective_timeout_seconds=120", "export.litert=false"]


def _assert_decoded_once(run_dir: Path, text: str) -> None:
    assert text.count("decoding 1797 images") == 1, text[-3000:]  # one decodes, the other waits or reuses
    assert len(list((run_dir / "decoded").iterdir())) == 1
    assert "replica(s) on 2 worker(s)" in text
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["examples"] == 359


@pytest.mark.parametrize("backend", [
    "multiworker",
    pytest.param("horovod", marks=pytest.mark.skipif(not __import__("importlib").util.find_spec("horovod"),
                                                     reason="horovod is not installed")),
])
def test_two_workers_train_the_folder(digits_folder, tmp_path, backend):
    from tests.integration.test_distribute import run_on_two_workers

    run_dir = tmp_path / "run"
    logs = run_on_two_workers([sys.executable, "-m", "job", "train", *TWO_WORKERS, *folder(digits_folder),
                               f"run.dir={run_dir}", f"distribute.backend={backend}"], backend, tmp_path, timeout=900)
    _assert_decoded_once(run_dir, "".join(log.read_text() for log in logs))


def test_a_folder_run_at_another_image_size_exports_and_predicts_at_that_size(digits_folder, tmp_path):
    import sklearn.datasets

    run_dir = tmp_path / "run"
    trained(run_dir, "--config", "digits_resnet20", "model.name=simple_cnn", "train.epochs=1",
            "train.max_steps_per_epoch=5", *folder(digits_folder), "data.image_size=48")
    card = json.loads((run_dir / "export" / "model_card.json").read_text())
    assert card["input"]["shape"] == [None, 48, 48, 3]
    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"  # 427x640: cropped and resized to 48
    for source in (["--run-dir", str(run_dir)], ["--model", str(run_dir / "export" / "model.keras")]):
        result = run_job("predict", *source, "--json", str(photo), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        (answer,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert answer["top"][0]["class"] in [str(d) for d in range(10)] and len(answer["top"]) == 5
