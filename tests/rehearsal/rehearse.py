"""The container rehearsal of k8s/job.yaml: the Job's pod template runs as a Pod under `podman kube play`, against
fake-gcs-server on the host's loopback, is stopped with SIGTERM mid-training like an evicted pod, and runs again.

Passes when:
  1. the first run exits 75 (the code the Job's podFailurePolicy retries) within the manifest's
     terminationGracePeriodSeconds, having committed a checkpoint whose files are all in the bucket, and its own log
     (logs/trainer/ in the bucket) holds what it printed up to the SIGTERM: the pod's log outlives the pod;
  2. the second run, in a fresh pod with fresh emptyDirs (like the Job's replacement pod), logs
     "resuming from step N" with N the step the first run committed, and exits 0;
  3. the bucket then holds a committed checkpoint of the last step and eval/metrics.json.

Usage: python tests/rehearsal/rehearse.py --image localhost/cifar-job:TAG [--out DIR]
(docker/rehearse.sh builds the image and calls this.) Needs root podman set up by docker/podman-setup.sh.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.rehearsal.job_pod import CHANGES, dump, find, load_docs, memory_volumes, rehearsal_docs
from tests.support.gcs_server import GcsServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

POD = "cifar-train-rehearsal"
CONTAINER = f"{POD}-trainer"  # podman names a pod's containers <pod>-<container>
BUCKET = "cifar-rehearsal"
RUN_PREFIX = "cifar/runs/rehearsal"
# Small enough to train in well under a minute on 2 cores, long enough (6 epochs of 44 steps) that the SIGTERM sent
# at the first commit (step 20) lands mid-training. validation_split, optimizer and run settings are the manifest's.
TINY_CONFIG: dict[str, Any] = {
    "preset": "rehearsal_digits_simple_cnn",
    "data": {"name": "digits"},
    "model": {"name": "simple_cnn"},
    "train": {"epochs": 6, "batch_size": 32},
    "checkpoint": {"every_steps": 20},
}
START_TIMEOUT_SECONDS = 300  # image start, TF import and the first 20 steps
RUN_TIMEOUT_SECONDS = 900


class RehearsalFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"[rehearse {time.strftime('%H:%M:%S')}] {message}", flush=True)


def podman(*args: str, check: bool = True) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RehearsalFailed(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


# --- the bucket, through fake-gcs-server's JSON API (not through the code under test) -----------------------------
class Bucket:
    def __init__(self, server: GcsServer, name: str):
        self.base = f"{server.endpoint}/storage/v1/b/{name}/o"

    def list(self, prefix: str) -> dict[str, int]:
        """Object name -> size, for every object under `prefix`."""
        objects, token = {}, ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            with urllib.request.urlopen(f"{self.base}?{query}", timeout=10) as resp:
                page = json.load(resp)
            objects.update({o["name"]: int(o["size"]) for o in page.get("items", [])})
            token = page.get("nextPageToken", "")
            if not token:
                return objects

    def read(self, name: str) -> bytes:
        with urllib.request.urlopen(f"{self.base}/{urllib.parse.quote(name, safe='')}?alt=media", timeout=10) as resp:
            return resp.read()


def check_pod_log_kept(bucket: Bucket, run: str, lines: list[str]) -> None:
    """The pod's own log outlives the pod: its file under logs/trainer/ in the bucket (job/runlog.py) holds what it
    printed up to its exit, the SIGTERM included."""
    logs = sorted(bucket.list(f"{RUN_PREFIX}/logs/trainer/"))
    if not logs:
        raise RehearsalFailed(f"{run} left no log in gs://{BUCKET}/{RUN_PREFIX}/logs/trainer/")
    text = bucket.read(logs[-1]).decode(errors="replace")
    missing = [line for line in lines if line not in text]
    if missing:
        raise RehearsalFailed(f"{run}'s log in the bucket ({logs[-1]}) lacks {missing}: its last lines were lost")
    log(f"{run}'s log survives the pod in gs://{BUCKET}/{logs[-1]} ({len(text.splitlines())} lines, "
        f"ending with {text.splitlines()[-1][:80]!r})")


def committed_steps(bucket: Bucket) -> list[int]:
    names = bucket.list(f"{RUN_PREFIX}/checkpoints/")
    return sorted(int(m.group(1)) for n in names if (m := re.search(r"/ckpt-(\d+)\.commit\.json$", n)))


def check_checkpoint_complete(bucket: Bucket, step: int) -> None:
    """The commit object of `step` exists and every file it names is stored with the size it states."""
    directory = f"{RUN_PREFIX}/checkpoints"
    commit = json.loads(bucket.read(f"{directory}/ckpt-{step}.commit.json"))
    stored = bucket.list(f"{directory}/")
    for entry in commit["files"]:
        size = stored.get(f"{directory}/{entry['name']}")
        if size != entry["size"]:
            raise RehearsalFailed(f"checkpoint {step}: {entry['name']} is {size} bytes in the bucket, "
                                  f"the commit says {entry['size']}")


# --- one pod run ---------------------------------------------------------------------------------------------------
class PodRun:
    """`podman kube play` of the rehearsal Pod; its trainer's log is copied live to stdout and to a file. `pod` and
    `container` name another rehearsal's Pod (rehearse_serve.py); podman names its containers <pod>-<name>."""

    def __init__(self, manifest: Path, volumes: list[str], tmpfs_volumes: dict[str, str], log_file: Path, label: str,
                 pod: str = POD, container: str = CONTAINER):
        self.manifest, self.volumes, self.tmpfs_volumes = manifest, volumes, tmpfs_volumes
        self.log_file, self.label = log_file, label
        self.pod, self.container = pod, container
        self._follower: subprocess.Popen | None = None
        self._copier: threading.Thread | None = None

    def remove(self) -> None:
        """Pod, containers and volumes of any earlier run: the next pod starts with empty emptyDirs."""
        podman("pod", "rm", "--force", "--ignore", "--time", "0", self.pod, check=False)
        for volume in self.volumes:
            if subprocess.run(["podman", "volume", "exists", volume]).returncode == 0:
                podman("volume", "rm", "--force", volume)

    def start(self) -> None:
        self.remove()
        for name, options in self.tmpfs_volumes.items():  # kube play mounts an existing volume of the same name
            podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", f"o={options}", name)
        podman("kube", "play", str(self.manifest))
        self._follower = subprocess.Popen(["podman", "logs", "--follow", self.container], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
        self._copier = threading.Thread(target=self._copy_log, daemon=True)
        self._copier.start()

    def _copy_log(self) -> None:
        with self.log_file.open("w") as out:
            for line in self._follower.stdout:
                out.write(line)
                out.flush()
                print(f"  [{self.label}] {line}", end="", flush=True)

    def status(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.container)

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.status() not in ("exited", "stopped"):
            if time.monotonic() > deadline:
                raise RehearsalFailed(f"{self.label}: the trainer did not exit within {timeout:.0f} s")
            time.sleep(1)
        if self._copier:
            self._copier.join(timeout=30)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.container))

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def wait_for_first_commit(bucket: Bucket, run: PodRun) -> int:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        steps = committed_steps(bucket)
        if steps:
            return steps[0]
        if run.status() in ("exited", "stopped"):
            raise RehearsalFailed(
                f"{run.label}: the trainer exited before committing a checkpoint (see {run.log_file})")
        if time.monotonic() > deadline:
            raise RehearsalFailed(f"{run.label}: no checkpoint committed within {START_TIMEOUT_SECONDS} s")
        time.sleep(0.2)


def rehearse(image: str, out: Path, job_yaml: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    grace = int(find(load_docs(job_yaml), "Job")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    server = GcsServer()
    server.start()
    log(f"fake-gcs-server pid {server.pid} on {server.endpoint}")
    run = None
    try:
        server.create_bucket(BUCKET)
        bucket = Bucket(server, BUCKET)
        docs = rehearsal_docs(job_yaml, pod_name=POD, image=image, run_dir=f"gs://{BUCKET}/{RUN_PREFIX}",
                              data_dir=f"gs://{BUCKET}/cifar/data", storage_emulator_host=server.endpoint,
                              train_overrides=TINY_CONFIG)
        manifest = out / "pod.yaml"
        manifest.write_text(dump(docs))
        configmap, pod = docs
        volumes = [v["name"] for v in pod["spec"]["volumes"]] + [configmap["metadata"]["name"]]
        tmpfs_volumes = memory_volumes(pod)
        log(f"Pod derived from {job_yaml.relative_to(ROOT)} -> {manifest}; changes:")
        for change in CHANGES:
            log(f"  - {change}")

        # --- run 1: SIGTERM at the first commit, as a node drain would send it ---
        started = time.monotonic()
        run = PodRun(manifest, volumes, tmpfs_volumes, out / "run1.log", "run1")
        run.start()
        first = wait_for_first_commit(bucket, run)
        times["run1: start to first commit"] = time.monotonic() - started
        log(f"checkpoint {first} committed; stopping the pod with SIGTERM and the manifest's grace period ({grace} s)")
        stopping = time.monotonic()
        podman("pod", "stop", "--time", str(grace), POD)
        code = run.wait_exit(grace)
        times["run1: SIGTERM to exit"] = time.monotonic() - stopping
        if code != 75:
            raise RehearsalFailed(f"run1 exited {code} after SIGTERM, not 75 (see {run.log_file})")
        match = re.search(r"checkpoint at step (\d+) committed", run.log_text())
        if not match:
            raise RehearsalFailed(f"run1's log does not say which checkpoint it committed on SIGTERM ({run.log_file})")
        sigterm_step = int(match.group(1))
        if sigterm_step not in committed_steps(bucket):
            raise RehearsalFailed(
                f"run1 says it committed step {sigterm_step}, the bucket has {committed_steps(bucket)}")
        check_checkpoint_complete(bucket, sigterm_step)
        if bucket.list(f"{RUN_PREFIX}/eval/"):
            raise RehearsalFailed("run1 stored an evaluation although it was stopped mid-training")
        check_pod_log_kept(bucket, "run1", ["SIGTERM received", "status: preempted"])
        log(f"run1 exited 75 with checkpoint {sigterm_step} committed and complete in gs://{BUCKET}/{RUN_PREFIX}")

        # --- run 2: the replacement pod, with fresh emptyDirs: it can only resume from the bucket ---
        started = time.monotonic()
        run = PodRun(manifest, volumes, tmpfs_volumes, out / "run2.log", "run2")
        run.start()
        code = run.wait_exit(RUN_TIMEOUT_SECONDS)
        times["run2: start to exit"] = time.monotonic() - started
        if code != 0:
            raise RehearsalFailed(f"run2 exited {code}, not 0 (see {run.log_file})")
        resumed = re.search(r"resuming from step (\d+)", run.log_text())
        if not resumed or int(resumed.group(1)) != sigterm_step:
            raise RehearsalFailed(f"run2 did not resume from step {sigterm_step}: "
                                  f"{resumed.group(0) if resumed else 'no resuming line'} ({run.log_file})")
        steps = committed_steps(bucket)
        check_checkpoint_complete(bucket, steps[-1])
        metrics = json.loads(bucket.read(f"{RUN_PREFIX}/eval/metrics.json"))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        log(f"run2 resumed from step {sigterm_step}, exited 0; bucket: checkpoints {steps}, eval/metrics.json "
            f"(step {metrics.get('step')}, test top-1 {metrics.get('top1', float('nan')):.3f})")
        return times
    finally:
        if run is not None:
            run.remove()
        server.stop()
        log("pod, volumes and fake-gcs-server removed")


def rehearsal_arguments(doc: str, out_holds: str) -> argparse.ArgumentParser:
    """The options of every rehearsal: the image it runs, and where it leaves what it made."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="the locally built image (docker/build-image.sh)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cifar-job-rehearsal"), help=f"where {out_holds} go")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = rehearsal_arguments(__doc__, "the derived pod.yaml, the trainer logs and metrics.json")
    parser.add_argument("--job-yaml", type=Path, default=ROOT / "k8s" / "job.yaml")
    args = parser.parse_args(argv)
    return report(lambda: rehearse(args.image, args.out.resolve(), args.job_yaml.resolve()))


def report(rehearsal: Callable[[], dict[str, float]]) -> int:
    """Run a rehearsal and log PASSED with its times or FAILED with the reason; the exit code."""
    started = time.monotonic()
    try:
        times = rehearsal()
    except RehearsalFailed as e:
        log(f"FAILED: {e}")
        return 1
    times["rehearsal total"] = time.monotonic() - started
    log("PASSED; times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
