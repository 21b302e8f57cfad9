"""A folder run with the user's own class names, through everything that shows them: the report in Chromium, `predict`,
and the `serve` page in Chromium (docs/own-images.md)."""
import json
import shutil
from pathlib import Path

import pytest

from tests.integration.test_report import check_report
from tests.integration.test_serve_page import TOKEN, cards, open_page_with_token, settled
from tests.support.browser import chromium
from tests.support.serve_server import TOKEN_ENV, ServeProcess
from tests.support.trainer_runs import run_job, wait_for

pytestmark = pytest.mark.slow

# Folder names as people write them: spaces, accents, mixed case; sorted, they are the labels 0, 1, 2.
CLASSES = {"0": "Ahorn blatt", "1": "chêne", "2": "oak leaf (Quercus)"}


@pytest.fixture(scope="module")
def leaves_run(tmp_path_factory) -> Path:
    """Digits 0, 1 and 2 (exported by the command) under the user's class names, trained briefly."""
    root = tmp_path_factory.mktemp("leaves")
    exported = root / "digits"
    done = run_job("export-data", "digits", str(exported), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for split in ("train", "test"):
        for digit, name in CLASSES.items():
            shutil.copytree(exported / split / digit, root / "leaves" / split / name)
    run_dir = root / "run"
    done = run_job("train", "--config", "digits_resnet20", "model.name=simple_cnn", "optim.lr=0.02",
                   "train.epochs=3", "train.batch_size=32", "run.progress=false", "data.name=folder",
                   f"data.dir={root / 'leaves'}", f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_the_report_shows_the_users_class_names(leaves_run, browser, tmp_path):
    page = check_report(browser, leaves_run, tmp_path / "report-folder.png", classes=3)
    for name in CLASSES.values():
        assert name in page["text"], name
    metrics = json.loads((leaves_run / "eval" / "metrics.json").read_text())
    assert metrics["top1"] > 0.9  # three easy digits: the labels follow the folders


def test_predict_answers_with_the_users_class_names(leaves_run):
    image = next((leaves_run.parent / "leaves" / "test" / "chêne").iterdir())
    result = run_job("predict", "--run-dir", str(leaves_run), "--json", str(image), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (answer,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [t["class"] for t in answer["top"]][0] == "chêne"
    assert {t["class"] for t in answer["top"]} == set(CLASSES.values())


def test_the_serve_page_shows_the_users_class_names(leaves_run, browser, tmp_path):
    server = ServeProcess.start(["--run-dir", str(leaves_run)], log_path=tmp_path / "serve.log",
                                env={TOKEN_ENV: TOKEN})
    try:
        server.wait_ready(timeout=300)
        open_page_with_token(browser, server)
        assert browser.find_element("id", "dataset").text == "folder"
        assert browser.find_element("id", "class-count").text == "3"
        picture = next((leaves_run.parent / "leaves" / "test" / "oak leaf (Quercus)").iterdir())
        browser.find_element("id", "files").send_keys(str(picture))
        wait_for(lambda: settled(browser, 1), timeout=60, process=server.process, what="a classified card")
        (card,) = cards(browser)
        assert card["done"] and card["names"][0] == "oak leaf (Quercus)", card
        assert set(card["names"]) == set(CLASSES.values())
    finally:
        server.stop()
