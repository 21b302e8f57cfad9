"""The container rehearsal of k8s/horovod-mpijob.yaml's launch: its launcher command (the relay, mpirun with the
manifest's options, `python -m job train ... distribute.backend=horovod`) runs in the image with two ranks, against
fake-gcs-server on the host's loopback; the container is stopped with SIGTERM mid-training, as a preempted launcher
pod would be, and started again.

No MPI Operator runs here, so the ranks run in the launcher's container (mpirun starts them locally instead of over
ssh in worker pods); what a worker pod adds, sshd and the worker-side relay, is shown by
tests/integration/test_sigterm.py.

Passes when:
  1. the first run exits 75 (relay -> SIGUSR1 -> mpirun -> every rank stops after the same step; the chief commits,
     the other waits for it), and the checkpoint the chief names is committed and complete in the bucket;
  2. the second run, in a fresh container with fresh tmpfs mounts, has both ranks resume from that step and exits 0;
  3. the bucket then holds eval/metrics.json.

Usage: python tests/rehearsal/rehearse_mpi.py --image localhost/cifar-job:TAG [--out DIR]  (an image with Horovod)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.rehearsal.job_pod import expand_kube_vars, find, load_docs, tiny_train_yaml
from tests.rehearsal.rehearse import (
    RUN_PREFIX,
    TINY_CONFIG,
    Bucket,
    RehearsalFailed,
    check_checkpoint_complete,
    committed_steps,
    log,
    podman,
    rehearsal_arguments,
    report,
)
from tests.support.gcs_server import GcsServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

CONTAINER = "cifar-train-hvd-rehearsal"
BUCKET = "cifar-rehearsal-mpi"
RANKS = 2
CHANGES = (
    "the ranks run in the launcher's container: mpirun starts them locally, not over ssh in worker pods",
    f"-np {RANKS}, plus --oversubscribe and --mca btl_vader_single_copy_mechanism none (no ptrace between the ranks "
    "in an unprivileged container)",
    "the worker pods' emptyDirs (/work, /home/trainer, /tmp) as tmpfs volumes owned by the pods' uid, /dev/shm "
    "podman's own; the ConfigMap's "
    "train.yaml with a tiny model, dataset and step count",
    "env RUN_DIR/DATA_DIR -> the fake bucket; STORAGE_EMULATOR_HOST added; host network; no GPU",
)
TIMEOUT_SECONDS = 900


def launcher_command(mpijob_yaml: Path, run_dir: str, data_dir: str) -> tuple[list[str], dict[str, str], dict]:
    """The launcher container's command line and env as the kubelet would run them, with the local-launch changes."""
    mpijob = find(load_docs(mpijob_yaml), "MPIJob")
    replicas = mpijob["spec"]["mpiReplicaSpecs"]
    launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
    worker_spec = replicas["Worker"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in launcher.get("env", []) if "value" in e}
    env.update(RUN_DIR=run_dir, DATA_DIR=data_dir)
    words = [expand_kube_vars(w, env) for w in launcher["command"] + launcher["args"]]
    mpirun = words.index("mpirun")
    np_at = words.index("-np", mpirun)
    words[np_at + 1] = str(RANKS)
    words[mpirun + 1:mpirun + 1] = ["--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
    return words, env, worker_spec


def run_container(image: str, words: list[str], env: dict[str, str], worker_spec: dict, config: Path,
                  log_file: Path) -> subprocess.Popen:
    remove_container()
    security = worker_spec["securityContext"]
    uid, gid = security["runAsUser"], security["runAsGroup"]
    worker = worker_spec["containers"][0]
    mounts = []
    for mount in worker["volumeMounts"]:
        if mount["mountPath"] == "/etc/job":
            mounts += ["--volume", f"{config}:/etc/job/{config.name}:ro"]
        elif mount["mountPath"] == "/dev/shm":
            mounts += ["--shm-size", "1g"]  # podman mounts its own tmpfs there
        else:  # a fresh tmpfs volume, owned by the pod's user as the kubelet's fsGroup makes an emptyDir writable
            volume = f"{CONTAINER}-{mount['name']}"
            podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt",
                   f"o=uid={uid},gid={gid},mode=0700", volume)
            mounts += ["--volume", f"{volume}:{mount['mountPath']}"]
    command = ["podman", "run", "--name", CONTAINER, "--network", "host", "--user", f"{uid}:{gid}",
               "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *mounts,
               *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
               "--entrypoint", words[0], image, *words[1:]]
    out = log_file.open("w")
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)


def remove_container() -> None:
    """The container and its tmpfs volumes from an earlier run: every run starts with empty ones."""
    podman("rm", "--force", "--ignore", CONTAINER, check=False)
    for volume in podman("volume", "ls", "--quiet", "--filter", f"name={CONTAINER}-", check=False).split():
        podman("volume", "rm", "--force", volume, check=False)


def wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = TIMEOUT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise RehearsalFailed(f"the launcher exited ({process.returncode}) before {what}")
        time.sleep(0.5)
    raise RehearsalFailed(f"no {what} within {timeout:.0f} s")


def rehearse(image: str, out: Path, mpijob_yaml: Path, job_yaml: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    server = GcsServer()
    server.start()
    log(f"fake-gcs-server pid {server.pid} on {server.endpoint}")
    try:
        server.create_bucket(BUCKET)
        bucket = Bucket(server, BUCKET)
        words, env, worker_spec = launcher_command(mpijob_yaml, f"gs://{BUCKET}/{RUN_PREFIX}",
                                                   f"gs://{BUCKET}/cifar/data")
        env["STORAGE_EMULATOR_HOST"] = server.endpoint
        (config_volume,) = [v for v in worker_spec["volumes"] if "configMap" in v]  # the recipe the ranks read
        (recipe,) = find(load_docs(job_yaml), "ConfigMap", config_volume["configMap"]["name"])["data"].values()
        config = out / "train.yaml"
        config.write_text(tiny_train_yaml(recipe, TINY_CONFIG))
        log(f"launcher command from {mpijob_yaml.relative_to(ROOT)}: {' '.join(words)}")
        for change in CHANGES:
            log(f"  - {change}")

        # --- run 1: SIGTERM to the launcher container at the first commit ---
        started = time.monotonic()
        run = run_container(image, words, env, worker_spec, config, out / "mpi-run1.log")
        first = wait_for(lambda: committed_steps(bucket), run, "checkpoint committed")[0]
        times["run1: start to first commit"] = time.monotonic() - started
        log(f"checkpoint {first} committed; SIGTERM to the launcher container")
        stopping = time.monotonic()
        podman("kill", "--signal", "TERM", CONTAINER)
        code = run.wait(timeout=TIMEOUT_SECONDS)
        times["run1: SIGTERM to exit"] = time.monotonic() - stopping
        text = (out / "mpi-run1.log").read_text()
        if code != 75:
            raise RehearsalFailed(f"run1 exited {code} after SIGTERM, not 75 (see {out / 'mpi-run1.log'})")
        if text.count("SIGUSR1 received: saving a checkpoint") != RANKS:
            raise RehearsalFailed(f"not every rank got SIGUSR1 from mpirun (see {out / 'mpi-run1.log'})")
        stopped_at = {int(s) for s in re.findall(r"checkpoint at step (\d+) committed", text)}
        if len(stopped_at) != 1 or text.count("committed; run the same command again") != RANKS:
            raise RehearsalFailed(f"the ranks did not stop at one committed step: {sorted(stopped_at)}")
        (step,) = stopped_at
        if step not in committed_steps(bucket):
            raise RehearsalFailed(f"run1 says it committed step {step}, the bucket has {committed_steps(bucket)}")
        check_checkpoint_complete(bucket, step)
        log(f"run1: both ranks stopped at step {step}, committed and complete in the bucket; exit 75")

        # --- run 2: a fresh container resumes on both ranks and finishes ---
        started = time.monotonic()
        run = run_container(image, words, env, worker_spec, config, out / "mpi-run2.log")
        code = run.wait(timeout=TIMEOUT_SECONDS)
        times["run2: start to exit"] = time.monotonic() - started
        text = (out / "mpi-run2.log").read_text()
        if code != 0:
            raise RehearsalFailed(f"run2 exited {code}, not 0 (see {out / 'mpi-run2.log'})")
        if text.count(f"resuming from step {step} (") != RANKS:
            raise RehearsalFailed(f"run2: not both ranks resumed from step {step} (see {out / 'mpi-run2.log'})")
        metrics = json.loads(bucket.read(f"{RUN_PREFIX}/eval/metrics.json"))
        (out / "mpi-metrics.json").write_text(json.dumps(metrics, indent=1))
        log(f"run2: both ranks resumed from step {step}, exit 0; eval/metrics.json stored (test top-1 "
            f"{metrics.get('top1', float('nan')):.3f})")
        return times
    finally:
        remove_container()
        server.stop()
        log("container, volumes and fake-gcs-server removed")


def main(argv: list[str] | None = None) -> int:
    parser = rehearsal_arguments(__doc__, "the derived launcher pod, the ranks' logs and mpi-metrics.json")
    parser.add_argument("--mpijob-yaml", type=Path, default=ROOT / "k8s" / "horovod-mpijob.yaml")
    parser.add_argument("--job-yaml", type=Path, default=ROOT / "k8s" / "job.yaml")
    args = parser.parse_args(argv)
    return report(lambda: rehearse(args.image, args.out.resolve(), args.mpijob_yaml.resolve(),
                                   args.job_yaml.resolve()))


if __name__ == "__main__":
    sys.exit(main())
