"""The container rehearsal of k8s/serve.yaml: the Deployment's pod template runs as a Pod under `podman kube play`,
reads a run from fake-gcs-server on the host's loopback, becomes ready and classifies a PNG.

Passes when:
  1. k8s/job.yaml's pod, derived as tests/rehearsal/rehearse.py derives it (tests/rehearsal/job_pod.py) and run from the
     same image, trains a tiny run (digits, simple_cnn, one epoch) into RUN_DIR in the fake bucket and exits 0: the run
     the server reads is what the cluster's trainer writes, by the same code;
  2. the pod (serve.yaml's pod template with only the changes it logs) answers the manifest's startupProbe within the
     probe's budget (initialDelaySeconds + periodSeconds x failureThreshold) and then its readinessProbe with 200 once
     the model is loaded. podman runs no probes, so they are sent from the host, to the path and port they name;
  3. GET /v1/model names the run's model, POST /v1/predict without the bearer token is refused with 401, and with it a
     real PNG (a digit) is classified: the answer names one of the run's classes, with probabilities;
  4. the livenessProbe still answers, and SIGTERM (podman pod stop with the manifest's terminationGracePeriodSeconds)
     ends the server with exit code 0.

Usage: python -m tests.rehearsal.rehearse_serve --image localhost/cifar-job:TAG [--out DIR]
(docker/rehearse.sh builds the image and calls it after tests/rehearsal/rehearse.py.) Needs root podman set up by
docker/podman-setup.sh. Logs (train.log, serve.log), the derived train-pod.yaml and serve-pod.yaml, and the answers go
to --out.
"""
from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from job.serve import TOKEN_ENV
from tests.rehearsal.job_pod import (
    POD_CHANGES,
    dump,
    find,
    load_docs,
    memory_volumes,
    rehearsal_docs,
    rehearsal_pod,
    trainer_container,
)
from tests.rehearsal.rehearse import (
    RUN_PREFIX,
    TINY_CONFIG,
    Bucket,
    PodRun,
    RehearsalFailed,
    committed_steps,
    log,
    podman,
    rehearsal_arguments,
    report,
)
from tests.support.gcs_server import GcsServer, _free_port
from tests.support.sample_images import digit_png
from tests.support.serve_server import Reply, get, post_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

POD = "cifar-serve-rehearsal"
TRAIN_POD = f"{POD}-train"
BUCKET = "cifar-rehearsal-serve"
# The job.yaml rehearsal's tiny recipe (digits, simple_cnn), one epoch: the quickest real run, stored like any run.
TINY_RUN = {**TINY_CONFIG, "preset": "rehearsal_serve", "train": {**TINY_CONFIG["train"], "epochs": 1}}
TRAIN_TIMEOUT_SECONDS = 600
READY_TIMEOUT_SECONDS = 300  # after /healthz: TensorFlow's import, the checkpoint from the bucket, a warm-up
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# The kubelet's defaults for fields a probe leaves out.
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}
CHANGES = (
    "Deployment -> Pod: one replica of its spec.template (podman's own Deployment support names pods itself, and two "
    "replicas on the host's network would want the same port)",
    *POD_CHANGES,
    "env RUN_DIR -> the fake bucket's run",
    "--host 0.0.0.0 -> 127.0.0.1 and --port -> a free port: on the host's network the server would otherwise open "
    "a fixed port on every interface of this shared machine; `ports` dropped (podman refuses port mappings with the "
    "host's network)",
    "startupProbe/readinessProbe/livenessProbe dropped from the Pod: podman 4.3 would make them a `curl` healthcheck, "
    "which the image lacks, and runs none without systemd; the rehearsal sends them from the host instead",
    f"env {TOKEN_ENV} from the Secret -> a value (podman 4.3.1 cannot read a Kubernetes Secret into env: it stores "
    "kube play's Secrets as YAML and reads them back as JSON)",
)


# --- the Pod -------------------------------------------------------------------------------------------------------
def serve_parts(serve_yaml: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Deployment's pod template, its one container) as the manifest has them."""
    template = find(load_docs(serve_yaml), "Deployment")["spec"]["template"]
    containers = template["spec"]["containers"]
    if len(containers) != 1:
        raise ValueError(f"expected one container in the Deployment's pod template, found {len(containers)}")
    return template, containers[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    if len(named) != 1:
        raise ValueError(f"the container has no port named {port!r}")
    return named[0]


def _set_option(words: list[str], option: str, value: str) -> str:
    """Replace the value after `option` in a command line; returns the old one."""
    if option not in words[:-1]:
        raise ValueError(f"the serve container's args have no {option}: the rehearsal cannot move it to a free port")
    at = words.index(option) + 1
    old, words[at] = words[at], value
    return old


def serve_pod(serve_yaml: Path, *, image: str, run_dir: str, storage_emulator_host: str, port: int,
              token: str) -> tuple[dict[str, Any], int]:
    """The Pod for `podman kube play` (the changes in CHANGES made) and the port the manifest's server listens on."""
    template, original = serve_parts(serve_yaml)
    pod = rehearsal_pod(template, pod_name=POD, image=image, container_name=original["name"],
                        env_values={"RUN_DIR": run_dir}, storage_emulator_host=storage_emulator_host)
    container = trainer_container(pod["spec"], original["name"])
    _set_option(container["args"], "--host", "127.0.0.1")
    manifest_port = int(_set_option(container["args"], "--port", str(port)))
    container.pop("ports", None)
    for probe in PROBES:
        container.pop(probe, None)
    tokens = [item for item in container.get("env", []) if item["name"] == TOKEN_ENV]
    if len(tokens) != 1:
        raise ValueError(f"the serve container has no env {TOKEN_ENV}: the token Secret is not passed on")
    tokens[0].pop("valueFrom", None)
    tokens[0]["value"] = token
    return pod, manifest_port


# --- the probes, from the host as the kubelet sends them -------------------------------------------------------------
def probe(container: dict[str, Any], kind: str, manifest_port: int, port: int) -> tuple[str, bool, int]:
    """(what was probed, passed, HTTP status or 0) of one try of the manifest's `kind` probe against the pod."""
    spec = {**PROBE_DEFAULTS, **container[kind]}
    get_spec = spec["httpGet"]
    target = container_port(container, get_spec["port"])
    if target != manifest_port:
        raise RehearsalFailed(f"the {kind} goes to port {target}, the server listens on {manifest_port}")
    what = f"{kind} GET {get_spec['path']}"
    try:
        status = get(f"http://127.0.0.1:{port}{get_spec['path']}", timeout=spec["timeoutSeconds"]).status
    except OSError:  # not listening yet, or no answer within timeoutSeconds
        return what, False, 0
    return what, 200 <= status < 400, status


def budget(container: dict[str, Any], kind: str) -> float:
    """How long the kubelet lets a probe fail before it acts."""
    spec = {**PROBE_DEFAULTS, **container[kind]}
    return spec["initialDelaySeconds"] + spec["periodSeconds"] * spec["failureThreshold"]


def wait_for_probe(run: PodRun, container: dict[str, Any], kind: str, manifest_port: int, port: int,
                   timeout: float) -> list[int]:
    """Send the probe every half second until it passes; the statuses seen before. Fails if the container exits or
    `timeout` passes."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while True:
        what, passed, status = probe(container, kind, manifest_port, port)
        if passed:
            return seen
        seen.append(status)
        if run.status() in ("exited", "stopped"):
            raise RehearsalFailed(f"the server exited before its {what} passed (see {run.log_file})")
        if time.monotonic() > deadline:
            raise RehearsalFailed(f"the {what} did not pass within {timeout:.0f} s (last status {status or 'none'}; "
                                  f"see {run.log_file})")
        time.sleep(0.5)


# --- the rehearsal -------------------------------------------------------------------------------------------------
def train_tiny_run(image: str, job_yaml: Path, server: GcsServer, bucket: Bucket, run_dir: str,
                   out: Path) -> list[str]:
    """The run the pod serves, trained into the fake bucket by k8s/job.yaml's pod in the same image; its class
    names."""
    docs = rehearsal_docs(job_yaml, pod_name=TRAIN_POD, image=image, run_dir=run_dir,
                          data_dir=f"gs://{BUCKET}/cifar/data", storage_emulator_host=server.endpoint,
                          train_overrides=TINY_RUN)
    manifest = out / "train-pod.yaml"
    manifest.write_text(dump(docs))
    configmap, pod = docs
    volumes = [v["name"] for v in pod["spec"]["volumes"]] + [configmap["metadata"]["name"]]
    log(f"training a tiny run with the Pod derived from {job_yaml.relative_to(ROOT)} -> {manifest} (the changes "
        "tests/rehearsal/rehearse.py lists)")
    run = PodRun(manifest, volumes, memory_volumes(pod), out / "train.log", "train", pod=TRAIN_POD,
                 container=f"{TRAIN_POD}-trainer")
    try:
        run.start()
        code = run.wait_exit(TRAIN_TIMEOUT_SECONDS)
    finally:
        run.remove()
    if code != 0:
        raise RehearsalFailed(f"training the tiny run exited {code} (see {run.log_file})")
    steps = committed_steps(bucket)
    if not steps:
        raise RehearsalFailed(f"training exited 0 but {run_dir} has no committed checkpoint")
    classes = json.loads(bucket.read(f"{RUN_PREFIX}/classes.json"))["classes"]
    log(f"tiny run trained into {run_dir}: checkpoints {steps}, classes {classes}")
    return classes


def check_reply(reply: Reply, what: str, status: int, out: Path, name: str) -> Any:
    (out / name).write_bytes(reply.body)
    if reply.status != status:
        raise RehearsalFailed(f"{what} answered {reply.status}, not {status}: {reply.body[:300]!r}")
    try:
        return reply.json
    except ValueError:
        raise RehearsalFailed(f"{what} answered {reply.status} with a body that is not JSON ({out / name})") from None


def rehearse(image: str, out: Path, serve_yaml: Path, job_yaml: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    template, original = serve_parts(serve_yaml)
    grace = int(template["spec"].get("terminationGracePeriodSeconds", 30))
    server = GcsServer()
    server.start()
    log(f"fake-gcs-server pid {server.pid} on {server.endpoint}")
    run = None
    try:
        server.create_bucket(BUCKET)
        bucket = Bucket(server, BUCKET)
        run_dir = f"gs://{BUCKET}/{RUN_PREFIX}"
        started = time.monotonic()
        classes = train_tiny_run(image, job_yaml, server, bucket, run_dir, out)
        times["training the tiny run"] = time.monotonic() - started

        port, token = _free_port(), secrets.token_hex(16)
        pod, manifest_port = serve_pod(serve_yaml, image=image, run_dir=run_dir,
                                       storage_emulator_host=server.endpoint, port=port, token=token)
        manifest = out / "serve-pod.yaml"
        manifest.write_text(dump([pod]))
        volumes = [v["name"] for v in pod["spec"].get("volumes", [])]
        log(f"Pod derived from {serve_yaml.relative_to(ROOT)} -> {manifest}; changes:")
        for change in CHANGES:
            log(f"  - {change}")

        # --- start, then the probes as the kubelet would send them ---
        started = time.monotonic()
        run = PodRun(manifest, volumes, {}, out / "serve.log", "serve", pod=POD, container=f"{POD}-{original['name']}")
        run.start()
        startup = budget(original, "startupProbe")
        wait_for_probe(run, original, "startupProbe", manifest_port, port, timeout=startup)
        times["pod start to startupProbe passed"] = time.monotonic() - started
        log(f"startupProbe passed after {times['pod start to startupProbe passed']:.0f} s (budget {startup:.0f} s)")
        seen = wait_for_probe(run, original, "readinessProbe", manifest_port, port, timeout=READY_TIMEOUT_SECONDS)
        times["pod start to readinessProbe passed"] = time.monotonic() - started
        log(f"readinessProbe passed after {times['pod start to readinessProbe passed']:.0f} s "
            f"(before: {', '.join(str(s) for s in sorted(set(seen))) or 'nothing'})")

        # --- the API ---
        base = f"http://127.0.0.1:{port}"
        info = check_reply(get(f"{base}/v1/model", token=token), "GET /v1/model", 200, out, "model.json")
        if info.get("model") != TINY_RUN["model"]["name"] or info.get("classes") != classes:
            raise RehearsalFailed(f"GET /v1/model does not describe the trained run: {json.dumps(info)[:300]}")
        png, label = digit_png(3)
        (out / "digit.png").write_bytes(png)
        check_reply(post_files(base, [("digit.png", png)]), "POST /v1/predict without the token", 401, out,
                    "predict-no-token.json")
        asked = time.monotonic()
        answer = check_reply(post_files(base, [("digit.png", png)], token=token), "POST /v1/predict", 200, out,
                             "predict.json")
        times["POST /v1/predict"] = time.monotonic() - asked
        try:
            (prediction,) = answer["predictions"]
            top = prediction["top"]
            names = [c["class"] for c in top]
            probabilities = [float(c["probability"]) for c in top]
        except (KeyError, TypeError, ValueError) as e:
            raise RehearsalFailed(f"POST /v1/predict answered JSON of another shape ({e!r}): "
                                  f"{json.dumps(answer)[:300]}") from None
        if not names or not set(names) <= set(classes) or not all(0 <= p <= 1 for p in probabilities):
            raise RehearsalFailed(f"POST /v1/predict names no class of the run: {json.dumps(answer)[:300]}")
        log(f"POST /v1/predict (digit {label}, {len(png)} bytes PNG): top class {names[0]!r} with "
            f"p={probabilities[0]:.2f}; without the token: 401")
        what, passed, status = probe(original, "livenessProbe", manifest_port, port)
        if not passed:
            raise RehearsalFailed(f"the {what} failed after serving ({status or 'no answer'})")

        # --- SIGTERM, as a rollout or a node drain sends it ---
        stopping = time.monotonic()
        podman("pod", "stop", "--time", str(grace), POD)
        code = run.wait_exit(grace + 10)
        times["SIGTERM to exit"] = time.monotonic() - stopping
        if code != 0:
            raise RehearsalFailed(f"the server exited {code} on SIGTERM, not 0 (see {run.log_file})")
        log(f"livenessProbe passed; SIGTERM: the server exited 0 in {times['SIGTERM to exit']:.1f} s")
        return times
    except (OSError, ValueError) as e:  # a request that failed outright, a manifest the rehearsal cannot use
        raise RehearsalFailed(f"{type(e).__name__}: {e}") from None
    finally:
        if run is not None:
            run.remove()
        server.stop()
        log("pod, volumes and fake-gcs-server removed")


def main(argv: list[str] | None = None) -> int:
    parser = rehearsal_arguments(__doc__, "the derived serve-pod.yaml, the logs and the answers")
    parser.add_argument("--serve-yaml", type=Path, default=ROOT / "k8s" / "serve.yaml")
    parser.add_argument("--job-yaml", type=Path, default=ROOT / "k8s" / "job.yaml",
                        help="the training Job whose pod trains the run that is served")
    args = parser.parse_args(argv)
    return report(lambda: rehearse(args.image, args.out.resolve(), args.serve_yaml.resolve(),
                                   args.job_yaml.resolve()))


if __name__ == "__main__":
    sys.exit(main())
