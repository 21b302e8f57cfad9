"""The published OpenAPI description of `python -m job serve` says what the server does (issue 25; docs/serving.md
"HTTP API"):
schemathesis (pinned in requirements-dev.txt) runs all its checks, every phase, against a real server without a
token and one with a token, and must report no failure. Bounded: a fixed seed, --max-examples and --max-time, the
CLI as a subprocess with a deadline; 127.0.0.1 only.

Told to schemathesis, in a config file written here: what an image is (tests/support/schemathesis_hooks.py: a file part
of POST /v1/predict must be a picture, as the description says) and one exception, stated where it is made: a v2
inference request whose `data` does not hold shape's n*S*S*3 values is schema-valid (JSON Schema cannot tie one
field's length to another's values) and is refused with 400; tests/integration/test_serve_v2.py checks that route with a
real client. Before the fix schemathesis 4.32 found the bearer scheme advertised on a server without a token, and a
request with no files valid by the description yet refused with 400; the first checks below pin both directly."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from job.serve.app import IMAGE_MEDIA_TYPES
from tests.support.serve_server import TOKEN_ENV, ServeProcess, get
from tests.support.trainer_runs import ROOT, trainer_env

TOKEN = "openapi-test-token-0123456789"
HOOKS = ROOT / "tests" / "support" / "schemathesis_hooks.py"
CONFIG = f"""hooks = "{HOOKS}"

[[operations]]
include-path = "/v2/models/{{name}}/infer"
# data whose length does not match shape is schema-valid and refused with 400 (see the module's docstring)
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]
"""


def serving(digits_run, folder: Path, env: dict):
    with ServeProcess.running(["--run-dir", str(digits_run), "--model-name", "digits"], folder / "log", env) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(digits_run, tmp_path_factory):
    yield from serving(digits_run, tmp_path_factory.mktemp("open"), {})


@pytest.fixture(scope="module")
def token_server(digits_run, tmp_path_factory):
    yield from serving(digits_run, tmp_path_factory.mktemp("token"), {TOKEN_ENV: TOKEN})


def description(server) -> dict:
    reply = get(server.url + "/openapi.json")
    assert reply.status == 200, reply.body
    return reply.json


def test_the_bearer_scheme_is_described_only_when_a_token_is_set(open_server, token_server):
    plain, guarded = description(open_server), description(token_server)
    assert "securitySchemes" not in plain.get("components", {})
    assert not any("security" in op or "401" in op["responses"] for ops in plain["paths"].values()
                   for op in ops.values())
    predict = guarded["paths"]["/v1/predict"]["post"]
    assert predict["security"] == [{"HTTPBearer": []}] and "401" in predict["responses"]
    assert "security" not in guarded["paths"]["/v2/health/ready"]["get"]  # the probes are open


def test_a_request_needs_at_least_one_file_and_nothing_but_files(open_server):
    body = description(open_server)["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["files"]["minItems"] == 1
    assert body["schema"]["additionalProperties"] is False
    assert body["encoding"]["files"]["contentType"] == ", ".join(IMAGE_MEDIA_TYPES)
    hooks = HOOKS.read_text()
    assert all(f'"{media_type}"' in hooks for media_type in IMAGE_MEDIA_TYPES)  # the fuzzer can make each one


def test_the_v2_model_name_is_the_one_served(open_server):
    parameters = description(open_server)["paths"]["/v2/models/{name}/infer"]["post"]["parameters"]
    assert [p["schema"].get("enum") for p in parameters if p["name"] == "name"] == [["digits"]]


def schemathesis(server, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    config = folder / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
               f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "8", "--max-time", "40",
               "--workers", "1", "--seed", "25", *extra]
    return subprocess.run(command, cwd=folder, env=trainer_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["without a token", "with a token"])
def test_schemathesis_finds_no_failure(which, open_server, token_server, tmp_path):
    server, extra = ((open_server, ()) if which == "without a token" else
                     (token_server, ("-H", f"Authorization: Bearer {TOKEN}")))
    operations = sum(len(ops) for ops in description(server)["paths"].values())
    result = schemathesis(server, tmp_path, *extra)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]  # schemathesis exits 1 on any check's failure
    assert f"Selected: {operations}/{operations}" in output and f"Tested: {operations}" in output, output[-3000:]
    assert re.search(r"(\d+) generated, \1 passed", output), output[-3000:]  # every generated case passed
