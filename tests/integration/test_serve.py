"""`python -m job serve` as a real process answering real HTTP (tests/support/serve_server.py), with the digits run that
tests/support/trained_model.py trains once per session.

One server serves the module: started with JOB_SERVE_TOKEN set and its model load held (JOB_SERVE_TEST_HOLD_LOAD)
until the fixture has seen it listening but not ready, so the 503s before the load happen by construction. Every bad
request is followed by a good one: the server keeps serving. At the end SIGTERM must stop it gracefully, exit code 0,
and its log must hold no traceback."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from job.overlay import OVERLAY_SIDE
from job.serve import resolve_model_threads
from tests.support.serve_server import (
    HOLD_ENV,
    TOKEN_ENV,
    ServeProcess,
    digit_images,
    get,
    multipart,
    png_bomb,
    png_bytes,
    post_files,
    post_streamed,
)
from tests.support.trainer_runs import free_loopback_ports, run_job, trainer_env

TOKEN = "test-token-0123456789abcdef"
MAX_MB, MAX_FILES = 1, 32


@pytest.fixture(scope="module")
def digits():
    return digit_images()


@pytest.fixture(scope="module")
def server(digits_run, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    release = folder / "release-the-load"
    server = ServeProcess.start(["--run-dir", str(digits_run), "--max-request-mb", str(MAX_MB),
                                 "--max-files", str(MAX_FILES)], log_path=folder / "serve.log",
                                env={TOKEN_ENV: TOKEN, HOLD_ENV: str(release)})
    try:
        server.wait_listening(timeout=60)
        image = png_bytes(digits[0][0])
        server.before_load = {"healthz": get(server.url + "/healthz"), "readyz": get(server.url + "/readyz"),
                              "model": get(server.url + "/v1/model", TOKEN),
                              "predict": post_files(server.url, [("0.png", image)], token=TOKEN)}
        release.touch()
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.stop()
    assert server.process.returncode == 0, f"SIGTERM: exit {server.process.returncode}\n{server.log()[-3000:]}"
    assert "Finished server process" in server.log()  # uvicorn's graceful shutdown ran
    assert "Traceback" not in server.log(), server.log()[-5000:]


def predict(server, files, query: str = "", token: str | None = TOKEN):
    return post_files(server.url, files, query, token=token)


def assert_still_serving(server, digits) -> None:
    images, labels = digits
    reply = predict(server, [("again.png", png_bytes(images[1]))])
    assert reply.status == 200, reply.body
    assert reply.json["predictions"][0]["top"][0]["class"] == str(labels[1])


# ----------------------------------------------------------------------------------------------- the probes
def test_listening_before_the_model_is_loaded(server):
    before = server.before_load
    assert before["healthz"].status == 200 and before["healthz"].json == {"status": "alive"}
    assert before["readyz"].status == 503 and before["readyz"].json == {"status": "loading"}
    assert before["readyz"].headers["retry-after"] == "5"
    for name in ("model", "predict"):
        assert before[name].status == 503, before[name].body
        assert "still loading" in before[name].error and before[name].headers["retry-after"] == "5"
    ready = get(server.url + "/readyz")
    assert ready.status == 200 and ready.json == {"status": "ready", "model": "simple_cnn", "dataset": "digits"}
    assert "model load held for a test" in server.log()


# -------------------------------------------------------------------------------------------- good requests
def test_digits_are_classified_with_their_top_five(server, digits):
    images, labels = digits
    chosen = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]  # the first image of each digit
    reply = predict(server, [(f"digit-{labels[i]}.png", png_bytes(images[i])) for i in chosen])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["model"] == "simple_cnn" and "gradcam_error" not in answer
    predictions = answer["predictions"]
    assert [p["file"] for p in predictions] == [f"digit-{d}.png" for d in range(10)]
    right = 0
    for digit, p in enumerate(predictions):
        assert (p["width"], p["height"]) == (32, 32) and "gradcam" not in p
        classes = p["top"]
        assert len(classes) == 5 and len({c["class_id"] for c in classes}) == 5
        assert all(c["class"] == str(c["class_id"]) for c in classes)  # the digits' class names are "0".."9"
        probabilities = [c["probability"] for c in classes]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6 and probabilities[0] > 0.2
        assert str(digit) in [c["class"] for c in classes]
        right += classes[0]["class_id"] == digit
    assert right >= 9, predictions  # a ~94 % model on images it was trained or tested on


def test_thirty_images_in_one_request_answer_in_order(server, digits):
    images, labels = digits
    files = [(f"{i:02d}.png", png_bytes(images[100 + i])) for i in range(30)]
    reply = predict(server, files)
    assert reply.status == 200, reply.body
    predictions = reply.json["predictions"]
    assert [p["file"] for p in predictions] == [name for name, _ in files]
    top1 = [p["top"][0]["class_id"] for p in predictions]
    assert np.mean(np.array(top1) == labels[100:130]) >= 0.8


def test_top_k_and_grad_cam_overlays(server, digits):
    from PIL import Image

    images, labels = digits
    reply = predict(server, [("seven.png", png_bytes(images[labels == 7][0])),
                             ("big.png", png_bytes(np.kron(images[labels == 7][0], np.ones((8, 8, 1), np.uint8))))],
                    "?top=3&explain=true")
    assert reply.status == 200, reply.body
    for p, size in zip(reply.json["predictions"], (32, 256)):
        assert len(p["top"]) == 3 and (p["width"], p["height"]) == (size, size)
        prefix = "data:image/png;base64,"
        assert p["gradcam"].startswith(prefix)
        overlay = Image.open(io.BytesIO(base64.b64decode(p["gradcam"][len(prefix):])))
        assert overlay.format == "PNG" and overlay.size == (OVERLAY_SIDE, OVERLAY_SIDE) and overlay.mode == "RGB"
        assert np.asarray(overlay).std() > 5  # a picture, not a flat square
    everything = predict(server, [("seven.png", png_bytes(images[labels == 7][0]))], "?top=50")
    assert everything.status == 200 and len(everything.json["predictions"][0]["top"]) == 10  # all classes
    assert abs(sum(c["probability"] for c in everything.json["predictions"][0]["top"]) - 1) < 1e-4


def test_model_endpoint_describes_the_run(server, digits_run):
    reply = get(server.url + "/v1/model", TOKEN)
    assert reply.status == 200, reply.body
    info = reply.json
    evaluation = json.loads((digits_run / "eval" / "metrics.json").read_text())
    assert info["model"] == "simple_cnn" and info["dataset"] == "digits" and info["image_size"] == 32
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["source"] == str(digits_run) and info["weights"].startswith("latest checkpoint (step ")
    assert info["metrics"]["top1"] == pytest.approx(evaluation["top1"]) and info["metrics"]["top1"] > 0.8
    assert info["metrics"]["examples"] == evaluation["examples"]
    assert info["limits"]["max_request_bytes"] == MAX_MB * 1024 * 1024 and info["limits"]["max_files"] == MAX_FILES
    # docs/serving.md (How fast): the model's thread pool, as TensorFlow reports it, leaves one core to the event loop
    cores = len(os.sched_getaffinity(0))
    assert info["model_threads"] == int(os.environ.get("TF_NUM_INTRAOP_THREADS") or max(1, cores - 1))


@pytest.mark.parametrize("given, cores, threads", [(None, 2, 1), (None, 8, 7), (None, 1, 1), ("3", 2, 3)])
def test_the_model_threads_leave_a_core_to_the_event_loop(given, cores, threads, monkeypatch):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    if given is not None:
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", given)  # Kubernetes' CPU limit (k8s/serve.yaml)
    assert resolve_model_threads(cores) == threads


def test_openapi_declares_the_multipart_body_and_docs_answer(server):
    docs = get(server.url + "/docs")
    assert docs.status == 200 and b"swagger" in docs.body.lower()
    schema = get(server.url + "/openapi.json").json
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]
    files = body["content"]["multipart/form-data"]["schema"]["properties"]["files"]
    assert body["required"] and files["type"] == "array" and files["items"]["format"] == "binary"
    parameters = {p["name"] for p in schema["paths"]["/v1/predict"]["post"]["parameters"]}
    assert parameters == {"top", "explain"}
    assert {"400", "401", "413", "415", "422", "503"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# ------------------------------------------------------------------------------------------------ the token
def test_the_token_guards_the_api_and_not_the_probes_or_the_page(server, digits):
    image = [("0.png", png_bytes(digits[0][0]))]
    for token in (None, "wrong-token-0123456789"):
        for reply in (predict(server, image, token=token), get(server.url + "/v1/model", token)):
            assert reply.status == 401, reply.body
            assert reply.headers["www-authenticate"] == "Bearer" and "bearer token" in reply.error
    assert predict(server, image).status == 200
    for path in ("/healthz", "/readyz", "/"):
        assert get(server.url + path).status == 200, path
    page = get(server.url + "/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert b'<input id="files" type="file"' in page.body


# --------------------------------------------------------------------------------------------- bad requests
def text_file():
    return [("notes.txt", b"this is not an image\n")]


def truncated_png(digits):
    data = png_bytes(digits[0][5])
    return [("cut.png", data[: len(data) // 2])]


BAD_FILES = {  # case -> (files, status, phrases of the error)
    "text file": (lambda d: text_file(), 422, ["notes.txt:", "not an image"]),
    "truncated png": (truncated_png, 422, ["cut.png:", "truncated"]),
    "png bomb": (lambda d: [("bomb.png", png_bomb())], 413,
                 ["bomb.png:", "20000x20000 = 400,000,000 pixels", "40,000,000"]),
    "one bad file among good ones": (lambda d: [("ok.png", png_bytes(d[0][0])), *text_file()], 422, ["notes.txt:"]),
    "too many files": (lambda d: [(f"{i}.png", png_bytes(d[0][i])) for i in range(MAX_FILES + 1)], 413,
                       [f"more than {MAX_FILES} files"]),
    "empty file": (lambda d: [("empty.png", b"")], 422, ["empty.png:", "empty"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_gets_its_status_and_names_itself(server, digits, case):
    files, status, phrases = BAD_FILES[case]
    reply = predict(server, files(digits))
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    for phrase in phrases:
        assert phrase in reply.error, reply.error
    assert "\n" not in reply.error and "Traceback" not in reply.error
    assert_still_serving(server, digits)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_upload_is_cut_off(server, digits, chunked):
    body, content_type = multipart([("huge.jpg", np.random.default_rng(0).bytes(3 * 1024 * 1024))])
    reply = post_streamed(server.port, body, content_type, chunked=chunked, token=TOKEN)
    assert reply.status == 413, reply.body
    assert f"larger than the limit of {MAX_MB} MB" in reply.error
    assert_still_serving(server, digits)


BAD_REQUESTS = {  # case -> (body, content type, query, status, phrase of the error)
    "no files": (b"--b--\r\n", "multipart/form-data; boundary=b", "", 400, "has no files"),
    "a form field": (b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
                     "multipart/form-data; boundary=b", "", 400, "form field 'x' is not a file"),
    "cut-off body": (b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\nabc',
                     "multipart/form-data; boundary=b", "", 400, "before its closing boundary"),
    "json body": (b'{"image": "..."}', "application/json", "", 415, "must be multipart/form-data"),
    "no boundary": (b"", "multipart/form-data", "", 400, "no boundary"),
    "top=0": (None, None, "?top=0", 422, "top:"),
    "explain=maybe": (None, None, "?explain=maybe", 422, "explain:"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_a_one_line_json_error(server, digits, case):
    from tests.support.serve_server import request

    body, content_type, query, status, phrase = BAD_REQUESTS[case]
    if body is None:
        body, content_type = multipart([("0.png", png_bytes(digits[0][0]))])
    reply = request("POST", f"{server.url}/v1/predict{query}", body,
                    {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
    assert reply.status == status, reply.body
    assert phrase in reply.error and "\n" not in reply.error
    assert_still_serving(server, digits)


def test_unknown_paths_and_methods_get_json_errors(server, digits):
    missing = get(server.url + "/v2/predict", TOKEN)
    assert missing.status == 404 and missing.json == {"error": "/v2/predict not found"}
    from tests.support.serve_server import request

    wrong_method = request("GET", server.url + "/v1/predict", headers={"Authorization": f"Bearer {TOKEN}"})
    assert wrong_method.status == 405 and wrong_method.error
    assert_still_serving(server, digits)


# ------------------------------------------------------------------------------- arguments and the load
def write_run_without_checkpoint(digits_run: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(digits_run / "config.yaml", folder / "config.yaml")
    return folder


def run_without_validation(digits_run: Path, folder: Path) -> Path:
    shutil.copytree(digits_run, folder)
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("validation_split: 0.1", "validation_split: 0.0"))
    return folder


@pytest.mark.parametrize("case", ["missing run dir", "not a run", "no checkpoint", "no best", "missing model",
                                  "not a model", "zero files", "short token", "port in use", "batch wait variable",
                                  "batch size variable", "model name", "public metrics variable",
                                  "threads variable"])
def test_bad_arguments_end_in_one_line_before_listening(case, digits_run, tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))  # a port someone listens on
    port = taken.getsockname()[1] if case == "port in use" else free_loopback_ports(1)[0]
    env = trainer_env()
    args, phrase = {
        "missing run dir": (["--run-dir", str(tmp_path / "nowhere")], "does not exist"),
        "not a run": (["--run-dir", str(tmp_path)], "is not a run directory"),
        "no checkpoint": (["--run-dir", str(write_run_without_checkpoint(digits_run, tmp_path / "fresh"))],
                          "no committed checkpoint"),
        "no best": (["--run-dir", str(run_without_validation(digits_run, tmp_path / "noval")), "--checkpoint", "best"],
                    "has no best checkpoint: it has no validation split"),
        "missing model": (["--model", str(tmp_path / "model.keras")], "does not exist"),
        "not a model": (["--model", str(digits_run / "config.yaml")], "not a .keras, .h5 or .tflite file"),
        "zero files": (["--run-dir", str(digits_run), "--max-files", "0"], "--max-files must be positive"),
        "short token": (["--run-dir", str(digits_run)], "shorter than 8 characters"),
        "port in use": (["--run-dir", str(digits_run)], f"cannot listen on 127.0.0.1 port {port}"),
        "batch wait variable": (["--run-dir", str(digits_run)], "JOB_SERVE_MAX_BATCH_WAIT_MS=-1 must be 0"),
        "batch size variable": (["--run-dir", str(digits_run)], "JOB_SERVE_MAX_BATCH_SIZE='2.5' is not a whole"),
        "model name": (["--run-dir", str(digits_run), "--model-name", "a/b"], "is not usable in a URL path"),
        "public metrics variable": (["--run-dir", str(digits_run)], "JOB_SERVE_PUBLIC_METRICS='yes' is not 1 or 0"),
        "threads variable": (["--run-dir", str(digits_run)], "TF_NUM_INTRAOP_THREADS='0' is not a whole number"),
    }[case]
    env.update({"short token": {TOKEN_ENV: "abc"}, "batch wait variable": {"JOB_SERVE_MAX_BATCH_WAIT_MS": "-1"},
                "batch size variable": {"JOB_SERVE_MAX_BATCH_SIZE": "2.5"},
                "public metrics variable": {"JOB_SERVE_PUBLIC_METRICS": "yes"},
                "threads variable": {"TF_NUM_INTRAOP_THREADS": "0"}}.get(case, {}))
    with taken:
        done = run_job("serve", *args, "--port", str(port), timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_model_that_fails_to_load_ends_the_process(digits_run, tmp_path):
    """The checks before listening pass (a config and a commit object), the load does not (the checkpoint's files
    are gone): the server, listening by then, logs one line and exits non-zero so Kubernetes restarts it."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        data.unlink()
    release = tmp_path / "release"
    server = ServeProcess.start(["--run-dir", str(run)], log_path=tmp_path / "serve.log", env={HOLD_ENV: str(release)})
    try:
        server.wait_listening(timeout=60)
        assert get(server.url + "/readyz").status == 503
        release.touch()
        code = server.process.wait(timeout=300)
    finally:
        server.stop()
    log = server.log()
    assert code not in (0, None), log
    failures = [line for line in log.splitlines() if "could not load the model" in line]
    assert len(failures) == 1 and "checkpoint" in failures[0], log
    assert "Traceback" not in log, log
