"""The report (eval/report.html), the history it reads, and `compare`: real runs of the trainer, the pages opened in
a real headless Chromium (Debian's chromium + chromium-driver, tests/tools/install.sh) driven by Selenium.

Each page must load every image, show one per-class row per class, and make no request beyond its own file and its
data: images. A full-page screenshot of each is kept in the folder printed at the start (JOB_TEST_ARTIFACTS to choose
it); look at them to see the pages."""
import json
import os
from pathlib import Path

import pytest

from tests.support.browser import artifacts_folder, chromium, console_problems, full_page_screenshot, requested_urls
from tests.support.cifar_archives import (
    write_cifar10_archive,
    write_cifar100_archive,
)
from tests.support.trainer_runs import committed_steps, kill_hard, run_job, start_job, trainer_env, wait_for

QUICK = ["train.epochs=2", "train.max_steps_per_epoch=5", "train.batch_size=16", "train.eval_batch_size=100",
         "run.progress=false"]


# ------------------------------------------------------------------------------------------------ the browser

@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return artifacts_folder(tmp_path_factory, "report-screenshots")


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def open_page(driver, page: Path, screenshot: Path) -> dict:
    """Load `page`, check it, keep a full-page screenshot; returns what the page holds for further checks."""
    driver.get_log("performance"), driver.get_log("browser")  # drop what earlier pages left
    url = page.resolve().as_uri()
    driver.set_window_size(1400, 1000)
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", timeout=30,
             what="the page to load")
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    assert images, "the page has no images"
    not_loaded = [alt for alt, complete, width, _ in images if not complete or width == 0]
    assert not not_loaded, f"images that did not load: {not_loaded}"
    assert {src for *_, src in images} == {"data:image/png;base64,"}

    requests = requested_urls(driver)
    assert url in requests  # the log does record requests
    assert [r for r in requests if r != url and not r.startswith("data:")] == [], "the page made network requests"
    problems = console_problems(driver)
    assert not problems, problems  # e.g. a Content-Security-Policy violation: something tried to load

    full_page_screenshot(driver, screenshot)
    rows = lambda table: driver.execute_script(  # noqa: E731
        f"const t = document.getElementById('{table}'); return t ? t.tBodies[0].rows.length : null")
    return {"images": [alt for alt, *_ in images], "per_class_rows": rows("per-class"), "starts_rows": rows("starts"),
            "text": driver.find_element("tag name", "body").text}


def train(run_dir: Path, *args: str, data: Path | None = None, md5: str = "") -> None:
    data_args = [f"data.dir={data}", f"data.md5={md5}", "data.download=false"] if data else []
    done = run_job("train", *args, *data_args, f"run.dir={run_dir}", *QUICK)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report stored in" in done.stderr, done.stderr[-3000:]


def check_report(browser, run_dir: Path, shot: Path, classes: int) -> dict:
    page = open_page(browser, run_dir / "eval" / "report.html", shot)
    assert page["per_class_rows"] == classes
    for alt in ("loss, top-1, learning rate and images/s per epoch", "confusion matrix",
                "predicted-class histogram against the true class counts", "reliability diagram"):
        assert alt in page["images"], (alt, page["images"])
    assert sum(alt.startswith("test image") for alt in page["images"]) >= 8  # the gallery
    assert sum(alt.startswith("Grad-CAM of test image") for alt in page["images"]) >= 8
    for text in ("test top-1", "Expected calibration error", "Effective config", "Most confused pairs"):
        assert text in page["text"]
    return page


# -------------------------------------------------------------------------------------------- reports per dataset

@pytest.fixture(scope="module")
def cifar10_runs(tmp_path_factory):
    """Two CIFAR-10 runs (simple_cnn with a validation split, and mlp) on one small generated archive."""
    root = tmp_path_factory.mktemp("cifar10")
    md5 = write_cifar10_archive(root / "data", n_train=200, n_test=100)
    cnn, mlp = root / "simple_cnn", root / "mlp"
    train(cnn, "--config", "cifar10_simple_cnn", "data.validation_split=0.2", data=root / "data", md5=md5)
    train(mlp, "--config", "cifar10_mlp", data=root / "data", md5=md5)
    return cnn, mlp


@pytest.mark.slow
@pytest.mark.timeout(600)  # trains the runs it reports on, then Chromium
def test_cifar10_report_opens_complete_and_offline(cifar10_runs, browser, artifacts):
    cnn, _ = cifar10_runs
    page = check_report(browser, cnn, artifacts / "report-cifar10.png", classes=10)
    assert "superclass confusion matrix" not in page["images"]
    assert "91.25%" not in page["text"] and "≈68% top-1" in page["text"]  # the preset's own reference figure
    history = json.loads((cnn / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert all(e["val_top1"] is not None and e["lr"] > 0 for e in history["epochs"])

    # made again from the best checkpoint by the command line
    before = (cnn / "eval" / "report.html").stat().st_mtime_ns
    again = run_job("report", "--run-dir", str(cnn), "--checkpoint", "best")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == str(cnn / "eval" / "report.html")
    assert (cnn / "eval" / "report.html").stat().st_mtime_ns > before
    assert "best weights" in (cnn / "eval" / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)  # trains the runs it reports on, then Chromium
def test_mlp_report_says_why_it_has_no_grad_cam(cifar10_runs, browser, artifacts):
    _, mlp = cifar10_runs
    page = open_page(browser, mlp / "eval" / "report.html", artifacts / "report-cifar10-mlp.png")
    assert page["per_class_rows"] == 10
    assert "no convolutional feature map" in page["text"]
    assert not any(alt.startswith("Grad-CAM") for alt in page["images"])


@pytest.mark.slow
@pytest.mark.timeout(600)  # trains the runs it reports on, then Chromium
@pytest.mark.parametrize("label_mode,classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_report(label_mode, classes, tmp_path, browser, artifacts):
    md5 = write_cifar100_archive(tmp_path / "data", n_train=200, n_test=200)
    run = tmp_path / "run"
    train(run, "--config", "cifar100_simple_cnn", f"data.label_mode={label_mode}", "data.validation_split=0",
          data=tmp_path / "data", md5=md5)
    page = check_report(browser, run, artifacts / f"report-cifar100-{label_mode}.png", classes=classes)
    assert ("superclass confusion matrix" in page["images"]) == (label_mode == "fine")
    assert ("superclass top-1" in page["text"]) == (label_mode == "fine")
    assert "no validation split" in page["text"]
    # no validation split, so no best checkpoint: refused in one line, nothing written
    refused = run_job("report", "--run-dir", str(run), "--checkpoint", "best")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {run} has no best checkpoint: it has no validation split (data.validation_split=0); "
        f"use --checkpoint latest"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # trains the runs it reports on, then Chromium
def test_digits_run_killed_twice_keeps_each_epoch_once_and_marks_both_resumes(tmp_path, browser, artifacts):
    """kill -9 while a checkpoint's commit is held (job/rundir.py TEST_HOLD_ENV), twice; each time the newest
    committed checkpoint is behind the epochs already recorded, so those are trained again."""
    run = tmp_path / "run"
    args = ["train", "--config", "digits_resnet20", "model.name=simple_cnn", f"run.dir={run}", "train.epochs=4",
            "train.max_steps_per_epoch=10", "train.batch_size=32", "checkpoint.every_steps=5", "run.progress=false"]
    for hold, committed in ((r"^checkpoint ckpt-15$", 10), (r"^checkpoint ckpt-25$", 20)):
        log = tmp_path / f"until-{committed}.log"
        process = start_job(*args, log_path=log, env=trainer_env(JOB_TEST_HOLD_TASK=hold))
        wait_for(lambda log=log: "held for a test" in log.read_text(), timeout=300, process=process,
                 what="a checkpoint's commit to be held")
        recorded = committed // 10 + 1  # an epoch past the committed checkpoint, trained again by the next start
        wait_for(lambda n=recorded: len(json.loads((run / "history.json").read_text())["epochs"]) >= n,
                 timeout=120, process=process, what="an epoch past the committed checkpoint to be recorded")
        kill_hard(process)
        assert committed_steps(run)[-1] == committed
    done = run_job(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from step 20" in done.stderr

    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    assert [s["step"] for s in history["starts"]] == [0, 10, 20]
    assert [s.get("outcome") for s in history["starts"]] == [None, None, "finished"]  # two killed, then done
    # the epoch's values come from the start that trained it last
    assert [e["start"] for e in history["epochs"]] == [0, 1, 2, 2]
    assert [e["step"] for e in history["epochs"]] == [10, 20, 30, 40]

    page = check_report(browser, run, artifacts / "report-digits-resumed.png", classes=10)
    assert page["starts_rows"] == 3
    assert "≥97% top-1" not in page["text"]  # digits_resnet20's figure is ResNet-20's, and this run is simple_cnn
    assert page["text"].count("no final record (killed)") == 2
    assert "restarts\n2" in page["text"]


# ------------------------------------------------------------------------------------------------------ compare

@pytest.mark.slow
@pytest.mark.timeout(600)  # trains the runs it reports on, then Chromium
def test_compare_prints_a_table_and_writes_a_page(cifar10_runs, tmp_path, browser, artifacts):
    cnn, mlp = cifar10_runs
    out = tmp_path / "pages" / "cmp.html"
    result = run_job("compare", str(cnn), str(mlp), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "model", "dataset", "parameters", "epochs", "wall", "time", "test", "loss",
                                "top-1", "top-5", "macro", "F1"]
    metrics = json.loads((cnn / "eval" / "metrics.json").read_text())
    cnn_row = next(line for line in lines if line.startswith("simple_cnn "))
    assert cnn_row.split()[1:3] == ["simple_cnn", "cifar10"]
    assert f"{metrics['top1']:.2%}" in cnn_row and f"{metrics['macro_f1']:.4f}" in cnn_row
    assert "2/2" in cnn_row
    page = open_page(browser, out, artifacts / "compare-cifar10.png")
    assert page["per_class_rows"] == 10
    assert "loss and top-1 per epoch, runs overlaid" in page["images"]
    assert "per-class F1 of each run" in page["images"]


def write_config_only_run(directory: Path, *overrides: str) -> Path:
    """A run directory as `train` starts it (its stored config.yaml), for checks that read runs only."""
    from job import config as configlib

    directory.mkdir(parents=True)
    cfg = configlib.load_config("cifar10_simple_cnn", list(overrides))
    (directory / "config.yaml").write_text(configlib.to_yaml(cfg))
    return directory


def test_compare_refuses_runs_of_different_datasets_in_one_line(tmp_path):
    a = write_config_only_run(tmp_path / "a")
    b = write_config_only_run(tmp_path / "b", "data.name=cifar100", "data.label_mode=coarse")
    result = run_job("compare", str(a), str(b), "--out", str(tmp_path / "c.html"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: runs on different datasets do not compare (a: cifar10, b: cifar100 (coarse)); give runs of one "
        "dataset"]
    assert not (tmp_path / "c.html").exists()


@pytest.mark.parametrize("args,message", [
    (["compare", "{a}"], "compare needs two or more run directories, e.g. python -m job compare runs/a runs/b"),
    (["compare", "{a}", "{missing}"], "{missing} does not exist; give the run.dir of a run"),
    (["compare", "{a}", "{empty}"], "{empty} is not a run directory: it has no config.yaml"),
    # the words of every command that takes a run's weights (job/weights.py)
    (["report", "--run-dir", "{missing}"], "--run-dir {missing} does not exist; give the run.dir of a training run"),
    (["report", "--run-dir", "{a}", "--checkpoint", "newest"], "--checkpoint newest is not a checkpoint (no "
                                                               "newest.index); give latest, best or a prefix"),
])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(tmp_path, args, message):
    places = {"a": str(write_config_only_run(tmp_path / "a")), "missing": str(tmp_path / "missing"),
              "empty": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    result = run_job(*[a.format(**places) for a in args], env=trainer_env())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message.format(**places)}"), lines
    assert not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty"]


# ---------------------------------------------------------------------------------------------------------------- gs://


@pytest.mark.slow
@pytest.mark.timeout(600)  # trains the runs it reports on, then Chromium
def test_a_gs_run_stores_its_report_and_history_in_the_bucket(tmp_path, gcs_bucket, browser, artifacts):
    from job.storage import open_storage

    url = f"{gcs_bucket}/run"
    env = trainer_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    done = run_job("train", "--config", "digits_resnet20", "model.name=simple_cnn", f"run.dir={url}",
                   f"run.work_dir={tmp_path / 'work'}", *QUICK, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    bucket = open_storage(url)
    assert [e["epoch"] for e in bucket.read_json("history.json")["epochs"]] == [1, 2]
    page = tmp_path / "from-the-bucket" / "report.html"
    page.parent.mkdir()
    page.write_bytes(bucket.read_bytes("eval/report.html"))
    assert open_page(browser, page, artifacts / "report-gs.png")["per_class_rows"] == 10
    # made again from the bucket alone, in a process with an empty working copy
    again = run_job("report", "--run-dir", url, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
