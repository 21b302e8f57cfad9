"""The Open Inference Protocol (v2 REST) of `python -m job serve`, spoken by a real client library: Triton's
tritonclient.http.InferenceServerClient (pinned in requirements-dev.txt) against a real server process with a token
and a --model-name, as KServe would run it (docs/serving.md "Open Inference Protocol"). Every answer is compared with
the
server's own /v1/predict for the same image; every error must be the protocol's {"error": "..."} with the status the
docs/serving.md states. Also /metrics: behind the token unless --public-metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.serve_server import TOKEN_ENV, ServeProcess, digit_images, get, png_bytes, post_files, request

TOKEN = "v2-test-token-0123456789"
NAME = "digits"
MAX_FILES = 8
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(digits_run, tmp_path_factory):
    with ServeProcess.running(["--run-dir", str(digits_run), "--model-name", NAME, "--max-files", str(MAX_FILES)],
                              tmp_path_factory.mktemp("serve-v2") / "log", {TOKEN_ENV: TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def digits():
    return digit_images()


def v1_probabilities(server, image: np.ndarray) -> np.ndarray:
    reply = post_files(server.url, [("x.png", png_bytes(image))], "?top=10", token=TOKEN)
    assert reply.status == 200, reply.body
    row = np.zeros(10, np.float32)
    for c in reply.json["predictions"][0]["top"]:
        row[c["class_id"]] = c["probability"]
    return row


def infer(client, images: np.ndarray, datatype: str, binary: bool, headers=AUTH):
    tensor = triton.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "class_ids")]
    # a copy: tritonclient adds Inference-Header-Content-Length to the dict it is given, for later calls too
    return client.infer(NAME, [tensor], outputs=outputs, headers=dict(headers) if headers else None)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()  # the probes need no token
    assert client.is_model_ready(NAME, headers=AUTH)
    metadata = client.get_model_metadata(NAME, headers=AUTH)
    assert metadata["name"] == NAME
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                   {"name": "class_ids", "datatype": "INT64", "shape": [-1]}]
    assert "binary_tensor_data" in client.get_server_metadata(headers=AUTH)["extensions"]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_answers_what_v1_answers(server, client, digits, datatype, binary):
    images, labels = digits
    batch = images[[10, 11, 12, 13]]
    sent = batch if datatype == "UINT8" else batch.astype(np.float32)
    result = infer(client, sent, datatype, binary)
    probabilities, class_ids = result.as_numpy("probabilities"), result.as_numpy("class_ids")
    assert probabilities.shape == (4, 10) and probabilities.dtype == np.float32
    assert class_ids.shape == (4,) and class_ids.dtype == np.int64
    assert result.get_response()["model_name"] == NAME
    for image, row, class_id in zip(batch, probabilities, class_ids):
        assert np.abs(row - v1_probabilities(server, image)).max() <= 1e-5
        assert class_id == row.argmax()
    assert (class_ids == labels[[10, 11, 12, 13]]).sum() >= 3  # a ~94 % model


def test_default_outputs_come_back_binary(client, digits):
    """No outputs named: tritonclient asks for every output in binary (binary_data_output)."""
    images, _ = digits
    tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(images[:1])
    result = client.infer(NAME, [tensor], headers=dict(AUTH))
    assert result.as_numpy("probabilities").shape == (1, 10)
    assert all("parameters" in output for output in result.get_response()["outputs"])


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_the_token_is_required(client, digits):
    images, _ = digits
    for headers in (None, {"Authorization": "Bearer wrong-token-123456"}):
        error = refused(lambda headers=headers: infer(client, images[:1], "UINT8", True, headers=headers))
        assert error.status() == "401" and "bearer token" in error.message()
        assert refused(lambda headers=headers: client.get_model_metadata(NAME, headers=headers)).status() == "401"


@pytest.mark.parametrize("images, datatype, status, phrase", [
    (np.zeros((1, 31, 32, 3), np.uint8), "UINT8", "400", "is not [n, 32, 32, 3]"),
    (np.zeros((1, 32, 32, 3), np.float64), "FP64", "400", "'FP64' is not supported"),
    (np.full((1, 32, 32, 3), 256.0, np.float32), "FP32", "400", "FP32 pixels must be finite and in [0, 255]"),
    (np.zeros((MAX_FILES + 1, 32, 32, 3), np.uint8), "UINT8", "413", f"send at most {MAX_FILES}"),
], ids=["side", "datatype", "fp32-out-of-range", "too-many"])
def test_bad_tensors_are_refused_in_the_protocol_error_shape(client, images, datatype, status, phrase):
    error = refused(lambda: infer(client, images, datatype, False))
    assert error.status() == status and phrase in error.message(), (error.status(), error.message())


def test_other_model_names_and_extensions_are_refused(client, digits):
    images, _ = digits
    error = refused(lambda: client.get_model_metadata("resnet20", headers=AUTH))
    assert error.status() == "404" and f"serves '{NAME}'" in error.message()
    tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(images[:1], binary_data=False)
    wanted = [triton.InferRequestedOutput("class_ids", binary_data=False, class_count=3)]
    error = refused(lambda: client.infer(NAME, [tensor], outputs=wanted, headers=dict(AUTH)))
    assert error.status() == "400" and "classification extension is not supported" in error.message()


def test_raw_protocol_errors_are_json_with_one_error_line(server):
    url = f"{server.url}/v2/models/{NAME}/infer"
    for body, phrase in ((b"not json", "the request is not JSON"),
                         (json.dumps({"inputs": []}).encode(), "must be a list of one tensor"),
                         (json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                                  "data": [0] * 5}]}).encode(), "has 5 values; its shape needs 3072")):
        reply = request("POST", url, body, {"Content-Type": "application/json", **AUTH})
        assert reply.status == 400 and set(reply.json) == {"error"} and phrase in reply.error, reply.body


def test_metrics_need_the_token_unless_public(server, client, digits):
    infer(client, digits[0][:1], "UINT8", True)
    assert get(server.url + "/metrics").status == 401
    reply = get(server.url + "/metrics", TOKEN)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert 'job_serve_requests_total{code="200",route="/v2/models/{name}/infer"}' in text
    assert "job_serve_batch_size_count" in text and "job_serve_queue_seconds_count" in text


def test_public_metrics_flag_serves_metrics_without_the_token(digits_run, tmp_path):
    server = ServeProcess.start(["--run-dir", str(digits_run), "--public-metrics"], log_path=tmp_path / "log",
                                env={TOKEN_ENV: TOKEN})
    try:
        server.wait_ready(timeout=300)
        assert get(server.url + "/metrics").status == 200
        assert get(server.url + "/v1/model").status == 401  # only /metrics is opened
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log()[-3000:]
