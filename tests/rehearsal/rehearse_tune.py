"""The container rehearsal of k8s/tune.yaml: the trial workers' pod template runs as two Pods under `podman kube play`
(the Indexed Job's two completion indexes), with the manifest's init container, against a PostgreSQL and
fake-gcs-server on the host's loopback, and together they finish a small study.

Passes when:
  1. the workers wait for their database: PostgreSQL starts only DB_DELAY_SECONDS after `podman kube play`, and no
     worker container starts before it (the init container holds them back; podman keeps no log of it); then both
     workers exit 0 (the Job would be complete);
  2. the study in PostgreSQL has exactly its 2 trials, both complete: the 2x1 grid (optim.lr x optim.weight_decay on
     digits, train.epochs=1), each point trained once;
  3. the bucket holds each trial's run (trials/<n>/, committed checkpoints and eval/metrics.json) and the study's
     files (space.yaml, leaderboard.txt, best.yaml, report.html).

Usage: python -m tests.rehearsal.rehearse_tune --image localhost/cifar-job:TAG [--out DIR]
(docker/rehearse.sh builds the image and calls it.) Needs root podman set up by docker/podman-setup.sh and Debian's
postgresql (tests/tools/install.sh): the database is a server of the rehearsal's own (tests/support/postgres_server.py),
run as the postgres user on 127.0.0.1. Logs (worker-<i>.log), the derived tune-pods.yaml and the leaderboard go to
--out.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tests.rehearsal.job_pod import POD_CHANGES, dump, find, load_docs, memory_volumes, rehearsal_pod, trainer_container
from tests.rehearsal.rehearse import Bucket, PodRun, RehearsalFailed, log, podman, rehearsal_arguments, report
from tests.support.gcs_server import GcsServer, _free_port
from tests.support.postgres_server import PostgresNotInstalled, PostgresServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

POD = "cifar-tune-rehearsal"  # pods <POD>-<index>
WORKERS = 2
BUCKET = "cifar-rehearsal-tune"
STUDY_PREFIX = "cifar/runs/tune-rehearsal"
DATABASE = "tune_rehearsal"
# The search: a 2x1 grid on the offline digits preset, one epoch per trial (the manifest's ResNet-20, about 25 steps).
SPACE: dict[str, Any] = {
    "study": "rehearsal-grid",
    "objective": "best validation top-1",
    "sampler": "grid",
    "pruner": "none",
    "params": {"optim.lr": {"choices": [0.05, 0.2]}, "optim.weight_decay": {"choices": [5.0e-4]}},
}
GRID = [{"optim.lr": 0.05, "optim.weight_decay": 5.0e-4}, {"optim.lr": 0.2, "optim.weight_decay": 5.0e-4}]
BASE_CONFIG = "digits_resnet20"
EXTRA_OVERRIDES = ("train.epochs=1",)
STORAGE_ENV = "JOB_TUNE_STORAGE"  # job/tune/study.py's; the image reads it
PASSWORD_ENV = "PGPASSWORD"
# PostgreSQL starts this long after the pods (which, with the database up, run their workers within 20 s here): the
# init container must wait for it.
DB_DELAY_SECONDS = 30
RUN_TIMEOUT_SECONDS = 1200  # image start, TensorFlow's import, two one-epoch trials with evaluation and reports
STUDY_FILES = ("space.yaml", "leaderboard.txt", "best.yaml", "report.html")
CHANGES = (
    f"Indexed Job -> {WORKERS} Pods, one per completion index, each with JOB_COMPLETION_INDEX set as the Job "
    "controller sets it (parallelism and completions: the manifest's K -> 2); both in one `podman kube play`",
    *POD_CHANGES,
    "the init container: the same image change (the locally built one, imagePullPolicy Never)",
    f"env STUDY_DIR/DATA_DIR -> the fake bucket; {STORAGE_ENV} and {PASSWORD_ENV} from the Secrets -> values: the "
    "database of the rehearsal's own PostgreSQL on 127.0.0.1, which trusts loopback connections, so the password is a "
    "dummy (podman 4.3.1 cannot read a Kubernetes Secret into env: it stores kube play's Secrets as YAML and reads "
    "them back as JSON)",
    f"--config cifar10_resnet20 -> {BASE_CONFIG} plus {' '.join(EXTRA_OVERRIDES)} (no CIFAR here; a study of minutes, "
    "not days); the manifest's other overrides stay",
    "ConfigMap space.yaml -> a 2x1 grid (optim.lr 0.05 | 0.2, optim.weight_decay 5e-4), no pruner",
)


# --- the Pods --------------------------------------------------------------------------------------------------------
def tune_parts(tune_yaml: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(the workers' Job, its pod template's one container, the space ConfigMap it mounts) as the manifest has them."""
    docs = load_docs(tune_yaml)
    job = find(docs, "Job", "cifar-tune")
    spec = job["spec"]["template"]["spec"]
    if len(spec["containers"]) != 1:
        raise ValueError(f"expected one container in the workers' pod template, found {len(spec['containers'])}")
    config_volumes = [v for v in spec.get("volumes", []) if "configMap" in v]
    if len(config_volumes) != 1:
        raise ValueError(f"expected one configMap volume in the workers' pod template, found {len(config_volumes)}")
    return job, spec["containers"][0], find(docs, "ConfigMap", config_volumes[0]["configMap"]["name"])


def _secret_env_to_value(container: dict[str, Any], values: dict[str, str]) -> None:
    for item in container.get("env", []):
        if item["name"] in values:
            if "secretKeyRef" not in item.get("valueFrom", {}):
                raise ValueError(f"{container['name']}: env {item['name']} does not come from a Secret")
            item.pop("valueFrom")
            item["value"] = values[item["name"]]
    missing = set(values) - {item["name"] for item in container.get("env", [])}
    if missing:
        raise ValueError(f"{container['name']}: no env {', '.join(sorted(missing))}")


def _set_option(words: list[str], option: str, value: str) -> None:
    if option not in words[:-1]:
        raise ValueError(f"the worker's args have no {option}")
    words[words.index(option) + 1] = value


def tune_docs(tune_yaml: Path, *, image: str, study_dir: str, data_dir: str, storage_url: str,
              storage_emulator_host: str, workers: int = WORKERS, cpus: int | None = None) -> list[dict[str, Any]]:
    """[the space ConfigMap, worker Pod 0, worker Pod 1, ...] for one `podman kube play`, with the CHANGES made."""
    job, original, configmap = tune_parts(tune_yaml)
    configmap = copy.deepcopy(configmap)
    (key,) = configmap["data"]
    configmap["data"][key] = yaml.safe_dump(SPACE, sort_keys=False)
    pods = []
    for index in range(workers):
        name = f"{POD}-{index}"
        pod = rehearsal_pod(job["spec"]["template"], pod_name=name, image=image, container_name=original["name"],
                            env_values={"STUDY_DIR": study_dir, "DATA_DIR": data_dir},
                            storage_emulator_host=storage_emulator_host, cpus=cpus)
        container = trainer_container(pod["spec"], original["name"])
        secrets = {STORAGE_ENV: storage_url, PASSWORD_ENV: "rehearsal-trust-auth"}
        _secret_env_to_value(container, secrets)
        container["env"].insert(0, {"name": "JOB_COMPLETION_INDEX", "value": str(index)})
        args = container["args"]
        _set_option(args, "--config", BASE_CONFIG)
        args.extend(EXTRA_OVERRIDES)
        for init in pod["spec"].get("initContainers", []):
            init["image"], init["imagePullPolicy"] = image, "Never"
            _secret_env_to_value(init, secrets)
        pods.append(pod)
    return [configmap, *pods]


# --- running them --------------------------------------------------------------------------------------------------
class WorkerPod(PodRun):
    """One worker Pod of the shared manifest: the first one plays it (both Pods start), the others only follow."""

    def __init__(self, manifest: Path, pod: dict[str, Any], container: str, log_file: Path, label: str,
                 extra_volumes: list[str]):
        volumes = [v["name"] for v in pod["spec"].get("volumes", [])] + extra_volumes
        super().__init__(manifest, volumes, memory_volumes(pod), log_file, label, pod=pod["metadata"]["name"],
                         container=f"{pod['metadata']['name']}-{container}")
        self.init_containers = [f"{pod['metadata']['name']}-{c['name']}" for c in pod["spec"].get("initContainers", [])]
        if not self.init_containers:
            raise ValueError("the workers' pod template has no init container to wait for the study database")

    def prepare(self) -> None:
        """Remove what an earlier run left and make the Memory emptyDirs, before the manifest is played."""
        self.remove()
        for name, options in self.tmpfs_volumes.items():
            podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", f"o={options}", name)

    def follow(self, timeout: float = 600) -> None:
        """Copy the worker's log once its container runs, which is after the init container has succeeded."""
        deadline = time.monotonic() + timeout
        while _state(self.container)[0] not in ("running", "exited", "stopped"):
            for init in self.init_containers:
                status, code = _state(init)
                if status in ("exited", "stopped") and code != 0:
                    raise RehearsalFailed(f"{self.label}: the init container exited {code}: "
                                          f"{podman('logs', init, check=False)[-2000:]}")
            if time.monotonic() > deadline:
                raise RehearsalFailed(f"{self.label}: the worker container did not start within {timeout:.0f} s")
            time.sleep(1)
        self._follower = subprocess.Popen(["podman", "logs", "--follow", self.container], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
        self._copier = threading.Thread(target=self._copy_log, daemon=True)
        self._copier.start()


def _state(container: str) -> tuple[str, int]:
    """(status, exit code) of a container; ("", 0) when there is none (yet, or any more)."""
    if subprocess.run(["podman", "container", "exists", container]).returncode != 0:
        return "", 0
    status, _, code = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container,
                             check=False).partition(" ")
    return status, int(code or 0)


def study_trials(storage_url: str, study: str) -> list[dict[str, Any]]:
    """The study's trials as the database has them (read with Optuna on the host, not by the code under test)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url)
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        return [{"number": t.number, "state": t.state.name, "params": dict(t.params), "value": t.value,
                 "user_attrs": dict(t.user_attrs)} for t in trials]
    finally:
        storage.engine.dispose()


def check_study(trials: list[dict[str, Any]]) -> None:
    states = sorted(t["state"] for t in trials)
    if states != ["COMPLETE"] * len(GRID):
        raise RehearsalFailed(f"the study has trials in states {states}, expected {len(GRID)} COMPLETE: "
                              f"{json.dumps(trials)[:600]}")
    points = sorted(tuple(sorted(t["params"].items())) for t in trials)
    expected = sorted(tuple(sorted(p.items())) for p in GRID)
    if points != expected:
        raise RehearsalFailed(f"the trials trained {points}, not the grid {expected} once each")


def check_bucket(bucket: Bucket, trials: list[dict[str, Any]]) -> dict[int, float]:
    """Each trial's run is complete in the bucket; the study's files are there. Returns trial -> test top-1."""
    results = {}
    for trial in trials:
        run_dir = trial["user_attrs"].get("run_dir", "")
        prefix = run_dir.split(f"gs://{BUCKET}/", 1)[-1].rstrip("/")
        if not run_dir.startswith(f"gs://{BUCKET}/{STUDY_PREFIX}/trials/"):
            raise RehearsalFailed(f"trial {trial['number']} ran in {run_dir!r}, not under the study dir's trials/")
        names = bucket.list(f"{prefix}/")
        if not any(re.search(r"/checkpoints/ckpt-\d+\.commit\.json$", n) for n in names):
            raise RehearsalFailed(f"trial {trial['number']}: no committed checkpoint in {run_dir}")
        if f"{prefix}/eval/metrics.json" not in names:
            raise RehearsalFailed(f"trial {trial['number']}: no eval/metrics.json in {run_dir}")
        results[trial["number"]] = json.loads(bucket.read(f"{prefix}/eval/metrics.json")).get("top1", float("nan"))
    stored = bucket.list(f"{STUDY_PREFIX}/")
    missing = [f for f in STUDY_FILES if f"{STUDY_PREFIX}/{f}" not in stored]
    if missing:
        raise RehearsalFailed(f"the study dir gs://{BUCKET}/{STUDY_PREFIX} lacks {', '.join(missing)}")
    return results


def rehearse(image: str, out: Path, tune_yaml: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    try:
        database = PostgresServer(port=_free_port())  # its URL goes into the pods before it runs
    except PostgresNotInstalled as e:
        raise RehearsalFailed(str(e)) from None
    storage_url = database.database_url(DATABASE)
    gcs = GcsServer()
    runs: list[WorkerPod] = []
    play: subprocess.Popen | None = None
    try:
        gcs.start()
        gcs.create_bucket(BUCKET)
        bucket = Bucket(gcs, BUCKET)
        log(f"fake-gcs-server pid {gcs.pid} on {gcs.endpoint}")

        study_dir = f"gs://{BUCKET}/{STUDY_PREFIX}"
        docs = tune_docs(tune_yaml, image=image, study_dir=study_dir, data_dir=f"gs://{BUCKET}/cifar/data",
                         storage_url=storage_url, storage_emulator_host=gcs.endpoint)
        manifest = out / "tune-pods.yaml"
        manifest.write_text(dump(docs))
        configmap, *pods = docs
        _, original, _ = tune_parts(tune_yaml)
        log(f"{len(pods)} Pods derived from {tune_yaml.relative_to(ROOT)} -> {manifest}; changes:")
        for change in CHANGES:
            log(f"  - {change}")

        runs = [WorkerPod(manifest, pod, original["name"], out / f"worker-{i}.log", f"worker {i}",
                          extra_volumes=[configmap["metadata"]["name"]] if i == 0 else [])
                for i, pod in enumerate(pods)]
        for run in runs:
            run.prepare()
        # --- the pods first, as on a first `kubectl apply`: the database is not up yet ---
        started = time.monotonic()
        play = subprocess.Popen(["podman", "kube", "play", str(manifest)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # it returns once the init containers are done
        time.sleep(DB_DELAY_SECONDS)
        early = [run.label for run in runs if _state(run.container)[0] in ("running", "exited", "stopped")]
        if early:
            raise RehearsalFailed(f"{', '.join(early)} started before the study database was up: the init container "
                                  "did not wait for it")
        waiting = [name for run in runs for name in run.init_containers if _state(name)[0] == "running"]
        if not waiting:
            raise RehearsalFailed(f"no init container is running {DB_DELAY_SECONDS} s after kube play, and no worker: "
                                  f"podman did not start the pods ({play.poll()=})")
        database.start()
        database.create_database(DATABASE)
        log(f"PostgreSQL (pid {database.pid}, as the postgres user) on 127.0.0.1:{database.port}, started "
            f"{DB_DELAY_SECONDS} s after the pods; until then no worker ran and {', '.join(waiting)} waited; "
            f"study database {storage_url}")
        db_up = time.monotonic()
        output, _ = play.communicate(timeout=900)
        if play.returncode != 0:
            raise RehearsalFailed(f"podman kube play failed ({play.returncode}): {output.strip()[-2000:]}")
        for run in runs:
            run.follow()
        times["database up to both workers running (init containers done)"] = time.monotonic() - db_up
        codes = [run.wait_exit(RUN_TIMEOUT_SECONDS - (time.monotonic() - started)) for run in runs]
        times["kube play to both workers exited"] = time.monotonic() - started
        if codes != [0] * len(runs):
            raise RehearsalFailed(f"the workers exited {codes}, not all 0 (see {out}/worker-*.log)")

        trials = study_trials(storage_url, SPACE["study"])
        (out / "trials.json").write_text(json.dumps(trials, indent=1, default=str))
        check_study(trials)
        results = check_bucket(bucket, trials)
        (out / "leaderboard.txt").write_bytes(bucket.read(f"{STUDY_PREFIX}/leaderboard.txt"))
        for i, run in enumerate(runs):
            trained = re.findall(r"trial (\d+)(?: \(retry of trial \d+\))?: optim", run.log_text())
            log(f"worker {i} trained trial(s) {', '.join(trained) or 'none'}")
        log("study done: " + "; ".join(f"trial {t['number']} lr={t['params']['optim.lr']} best validation top-1 "
                                       f"{t['value']:.3f}, test top-1 {results[t['number']]:.3f}" for t in trials))
        log(f"bucket: trials/0..{len(trials) - 1} with committed checkpoints and eval/metrics.json; "
            f"{', '.join(STUDY_FILES)}")
        return times
    except (OSError, ValueError, RuntimeError) as e:  # a server that did not start, a manifest it cannot use
        raise RehearsalFailed(f"{type(e).__name__}: {e}") from None
    finally:
        if play is not None and play.poll() is None:
            play.kill()
            play.wait()
        for run in runs:
            run.remove()
        gcs.stop()
        database.stop()
        log("pods, volumes, fake-gcs-server and PostgreSQL removed")


def main(argv: list[str] | None = None) -> int:
    parser = rehearsal_arguments(__doc__, "the derived tune-pods.yaml, the worker logs and the leaderboard")
    parser.add_argument("--tune-yaml", type=Path, default=ROOT / "k8s" / "tune.yaml")
    args = parser.parse_args(argv)
    return report(lambda: rehearse(args.image, args.out.resolve(), args.tune_yaml.resolve()))


if __name__ == "__main__":
    sys.exit(main())
