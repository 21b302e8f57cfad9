"""The page of `python -m job serve` in a real headless Chromium (tests/support/browser.py): the server is a real
process with JOB_SERVE_TOKEN set, so the page must first ask for the token; then PNGs picked through the file input come
back with their top-5 and a Grad-CAM toggle, and a file that is not an image shows the server's error on its card. The
page may request nothing but its own server (its images are blob: and data: URLs). Screenshots are kept in the folder
printed at the start (JOB_TEST_ARTIFACTS to choose it)."""
from __future__ import annotations

import pytest

from job.overlay import OVERLAY_SIDE
from tests.support.browser import artifacts_folder, chromium, console_problems, full_page_screenshot, requested_urls
from tests.support.serve_server import TOKEN_ENV, ServeProcess, digit_images, png_bytes
from tests.support.trainer_runs import wait_for

TOKEN = "page-token-0123456789abcdef"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return artifacts_folder(tmp_path_factory, "serve-screenshots")


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def server(digits_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-page")
    server = ServeProcess.start(["--run-dir", str(digits_run)], log_path=folder / "serve.log", env={TOKEN_ENV: TOKEN})
    try:
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Files to pick: the first 7 and the first 2 of the digits, and a text file."""
    folder = tmp_path_factory.mktemp("pictures")
    images, labels = digit_images()
    files = {}
    for digit in (7, 2):
        files[digit] = folder / f"digit-{digit}.png"
        files[digit].write_bytes(png_bytes(images[labels == digit][0]))
    files["text"] = folder / "notes.txt"
    files["text"].write_text("this is not an image\n")
    return files


def js(driver, script: str):
    return driver.execute_script(script)


def open_page_with_token(driver, server) -> None:
    """Load the page as a first-time visitor: it asks for the token; give it and wait for the model's facts."""
    driver.get(server.url + "/")
    js(driver, "sessionStorage.clear()")
    driver.get_log("performance"), driver.get_log("browser")  # drop what earlier pages left
    driver.get(server.url + "/")
    wait_for(lambda: js(driver, "return document.getElementById('token-form').classList.contains('shown')"),
             timeout=30, process=server.process, what="the page to ask for the token")
    assert "bearer token" in driver.find_element("id", "token-why").text
    driver.find_element("id", "token").send_keys(TOKEN)
    driver.find_element("id", "token-submit").click()
    wait_for(lambda: driver.find_element("id", "model-name").text == "simple_cnn", timeout=30,
             process=server.process, what="the model's name on the page")
    assert not driver.find_element("id", "token-form").is_displayed()


def cards(driver) -> list[dict]:
    return js(driver, """return Array.from(document.querySelectorAll('.result')).map(card => ({
        filename: card.dataset.filename, done: card.classList.contains('done'),
        failed: card.classList.contains('failed'), gradcam: card.classList.contains('has-gradcam'),
        names: Array.from(card.querySelectorAll('.bar .name')).map(n => n.textContent),
        percents: Array.from(card.querySelectorAll('.bar .p')).map(n => n.textContent),
        error: (card.querySelector('.error') || {}).textContent || null}))""")


def settled(driver, count: int) -> bool:
    found = cards(driver)
    return len(found) == count and all(c["done"] or c["failed"] for c in found)


def check_requests(driver, server) -> None:
    """Only the page's own server was asked for anything; the console shows no policy violation, and its only
    errors are the HTTP errors the page itself shows (a 422 for the text file)."""
    urls = requested_urls(driver)
    assert server.url + "/" in urls and server.url + "/v1/model" in urls
    assert [u for u in urls if not u.startswith((server.url + "/", "blob:", "data:"))] == []
    unexpected = [p for p in console_problems(driver) if "the server responded with a status of 4" not in p]
    assert not unexpected, unexpected


def test_the_page_asks_for_the_token_and_classifies_pngs(server, browser, pictures, artifacts, digits_run):
    open_page_with_token(browser, server)
    assert browser.find_element("id", "dataset").text == "digits"
    accuracy = browser.find_element("id", "accuracy").text
    assert "% top-1" in accuracy and "test images" in accuracy, accuracy
    assert browser.find_element("id", "class-count").text == "10"

    browser.find_element("id", "files").send_keys(f"{pictures[7]}\n{pictures[2]}")  # two files picked at once
    wait_for(lambda: settled(browser, 2), timeout=60, process=server.process, what="two classified cards")
    found = {c["filename"]: c for c in cards(browser)}
    for digit in (7, 2):
        card = found[f"digit-{digit}.png"]
        assert card["done"] and card["error"] is None
        assert len(card["names"]) == 5 and card["names"][0] == str(digit), card
        assert all(p.endswith("%") for p in card["percents"])
        assert card["gradcam"]

    # the Grad-CAM toggle swaps the picture for the server's overlay, and back
    card = "document.querySelector('.result[data-filename=\"digit-7.png\"]')"
    original = js(browser, f"return {card}.querySelector('img').src")
    assert original.startswith("blob:")
    js(browser, f"{card}.querySelector('input.gradcam').click()")
    wait_for(lambda: js(browser, f"const i = {card}.querySelector('img'); "
                                 "return i.src.startsWith('data:image/png;base64,') && i.complete && "
                                 f"i.naturalWidth === {OVERLAY_SIDE}"), timeout=10, what="the Grad-CAM overlay")
    full_page_screenshot(browser, artifacts / "serve-page-gradcam.png")
    js(browser, f"{card}.querySelector('input.gradcam').click()")
    assert js(browser, f"return {card}.querySelector('img').src") == original
    full_page_screenshot(browser, artifacts / "serve-page-classified.png")
    check_requests(browser, server)


def test_a_file_that_is_not_an_image_shows_the_error_on_its_card(server, browser, pictures, artifacts):
    open_page_with_token(browser, server)
    browser.find_element("id", "files").send_keys(str(pictures["text"]))
    wait_for(lambda: settled(browser, 1), timeout=60, process=server.process, what="the text file's card")
    (card,) = cards(browser)
    assert card["failed"] and not card["names"], card
    assert "notes.txt" in card["error"] and "not an image" in card["error"], card
    assert browser.find_element("css selector", ".result.failed .error").is_displayed()

    # the page goes on working after the error
    browser.find_element("id", "files").send_keys(str(pictures[2]))
    wait_for(lambda: settled(browser, 2), timeout=60, process=server.process, what="the PNG after the error")
    assert [c["names"][:1] for c in cards(browser) if c["done"]] == [["2"]]
    full_page_screenshot(browser, artifacts / "serve-page-error.png")
    check_requests(browser, server)
