"""Static checks of k8s/: kustomize renders, schemas pass, the project's own rules hold, and checkov finds nothing new.

No cluster is needed. The tools come from tests/tools/install.sh (kubectl, kubernetes-validate and checkov, pinned);
a missing one fails with that fix. What schemas cannot see is checked here against the code it must agree with:
exit codes (job/errors.py), the CLI (job/cli.py), the config loader (job/config.py), the multi-worker cluster parser
(job/distribute/multiworker.py) and the image (docker/Dockerfile).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import kubernetes_validate
except ImportError:
    pytest.fail("kubernetes-validate is not installed; run `bash tests/tools/install.sh`", pytrace=False)

from job.cli import build_parser, relayed_command  # noqa: E402
from job.config import list_presets, load_config  # noqa: E402
from job.errors import EXIT_CRASH, EXIT_PEER_LOST, EXIT_PREEMPTED, EXIT_USER_ERROR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
MANIFESTS = ("job.yaml", "multiworker.yaml", "jobset.yaml", "horovod-mpijob.yaml", "tensorboard.yaml",
             "kueue/queue.yaml", "serve.yaml", "serve-hpa.yaml", "tune.yaml")
# Kinds of custom resources, which kubernetes-validate has no schema for, and the cluster-scoped ones among them.
CRD_KINDS = ("MPIJob", "JobSet", "ResourceFlavor", "ClusterQueue", "LocalQueue")
CLUSTER_SCOPED = ("ResourceFlavor", "ClusterQueue")
VENV_BIN = Path(sys.executable).parent
# The oldest Kubernetes the manifests support (podReplacementPolicy is beta and on by default from 1.29) and the newest.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# On SIGTERM the trainer finishes its step and saves locally before its upload budget
# (checkpoint.upload_timeout_seconds) starts; this is the allowance for that first part, on the largest preset model.
SIGTERM_MARGIN_SECONDS = 60
JOB_COMMAND = ["python", "-m", "job"]
GPU = "nvidia.com/gpu"
MPIJOB_SPEC_FIELDS = {"slotsPerWorker", "runLauncherAsWorker", "launcherCreationPolicy", "mpiImplementation",
                      "sshAuthMountPath", "runPolicy", "mpiReplicaSpecs"}
MPIJOB_RUN_POLICY_FIELDS = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
                            "schedulingPolicy", "suspend", "managedBy"}


# --- tools ---------------------------------------------------------------------------------------------------------
def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {VENV_BIN}; run `bash tests/tools/install.sh`")
    return str(path)


def checkov_path() -> str:
    tools_dir = Path(os.environ.get("JOB_TOOLS_DIR", Path.home() / ".cache" / "job-tools"))
    path = tools_dir / "checkov" / "bin" / "checkov"
    if not path.exists():
        pytest.fail(f"checkov is not installed at {path}; run `bash tests/tools/install.sh`")
    return str(path)


def kustomize(directory: Path) -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# --- reading manifests ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw() -> dict[str, list[dict]]:
    return {name: [d for d in yaml.safe_load_all((K8S / name).read_text()) if d] for name in MANIFESTS}


@pytest.fixture(scope="module")
def raw_docs(raw) -> list[dict]:
    return [d for docs in raw.values() for d in docs]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(K8S)


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(label, pod template) of every pod a workload creates."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in ("Job", "Deployment"):
        yield name, doc["spec"]["template"]
    elif doc["kind"] == "MPIJob":
        for role, replica in doc["spec"]["mpiReplicaSpecs"].items():
            yield f"{name}/{role}", replica["template"]


def all_pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    return [t for d in docs for t in pod_templates(d)]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def job_argv(container: dict) -> list[str] | None:
    """The arguments after `python -m job` when the container runs the trainer CLI (also through `python -m job
    relay -- ...`), else None."""
    words = container_argv(container)
    for i in range(len(words) - len(JOB_COMMAND) + 1):
        if words[i:i + len(JOB_COMMAND)] == JOB_COMMAND and words[i + len(JOB_COMMAND):][:1] != ["relay"]:
            return words[i + len(JOB_COMMAND):]
    return None


def container_argv(container: dict) -> list[str]:
    command, args = container.get("command"), container.get("args", [])
    if command is None:  # the image's ENTRYPOINT, `python -m job` (tests/unit/test_dockerfiles.py checks)
        command = JOB_COMMAND
    return list(command) + list(args)


def relayed(container: dict) -> tuple[str, list[str]]:
    """(--to, the relayed command line) of a container that runs `python -m job relay --to X -- COMMAND ...`."""
    words = container_argv(container)
    assert words[:len(JOB_COMMAND) + 1] == [*JOB_COMMAND, "relay"], f"not run under python -m job relay: {words}"
    args = build_parser().parse_args(words[len(JOB_COMMAND):])
    return args.to, relayed_command(args)


def mount_for(path: str, pod_spec: dict, container: dict) -> dict | None:
    """The volume backing `path` in the container: the deepest mount that contains it."""
    mounts = [m for m in container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"])


def image_user() -> tuple[int, int, str]:
    """uid, gid and HOME of the image's user (docker/Dockerfile)."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", dockerfile, re.M)
    homes = re.findall(r"\bHOME=(\S+)", dockerfile)
    assert users and homes, "docker/Dockerfile sets no numeric USER uid:gid or no HOME"
    return int(users[-1][0]), int(users[-1][1]), homes[-1]


class Trainer:
    """A container running `python -m job train`, with the config it would load.

    For an MPIJob the launcher's mpirun holds the command line, but the ranks run in the worker pods: the config file
    and the working directories must exist there (`runs_in`).
    """

    def __init__(self, workload: dict, label: str, template: dict, container: dict, docs: list[dict], tmp: Path):
        self.workload, self.label, self.template, self.container = workload, label, template, container
        if workload["kind"] == "MPIJob":
            worker = workload["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
            self.runs_in = (worker, worker["containers"][0])
        else:
            self.runs_in = (template["spec"], container)
        self.env = env_of(container)
        self.argv = [expand(a, self.env) for a in job_argv(container)]
        try:
            self.args = build_parser().parse_args(self.argv)
        except SystemExit:
            pytest.fail(f"{label}: `python -m job {' '.join(self.argv)}` is not a valid command line (see above)")
        assert self.args.command == "train", f"{label}: runs `python -m job {self.args.command}`, expected train"
        volume = mount_for(self.args.config, *self.runs_in)
        assert volume and "configMap" in volume, f"{label}: --config {self.args.config} is not on a ConfigMap volume"
        self.config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
        local = tmp / label.replace("/", "_") / Path(self.args.config).name
        local.parent.mkdir(parents=True, exist_ok=True)
        self.config_text = self.config_map["data"][Path(self.args.config).name]
        local.write_text(self.config_text)
        self.cfg = load_config(str(local), self.args.overrides)


@pytest.fixture(scope="module")
def trainers(raw_docs, tmp_path_factory) -> list[Trainer]:
    tmp = tmp_path_factory.mktemp("configs")
    found = []
    for doc in raw_docs:
        for label, template in pod_templates(doc):
            for container in template["spec"]["containers"]:
                argv = job_argv(container)
                # The serving Deployment has its own tests below, the tuning workers theirs in test_k8s_tune.py.
                if argv is not None and argv[:1] not in (["serve"], ["tune"]):
                    found.append(Trainer(doc, label, template, container, raw_docs, tmp))
    return found


def replicas(trainer: Trainer) -> int:
    """How many training processes the workload runs, from the manifest alone."""
    workload = trainer.workload
    gpus = int(trainer.container.get("resources", {}).get("limits", {}).get(GPU, 1))
    if workload["kind"] == "Job":
        return workload["spec"].get("completions", 1) * gpus
    if workload["kind"] == "MPIJob":
        args = trainer.container["args"]
        return int(args[args.index("-np") + 1])
    raise AssertionError(workload["kind"])


def gpu_pod_templates(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(label, template, container) of every container that asks for a GPU."""
    return [(label, t, c) for label, t in all_pod_templates(docs) for c in t["spec"]["containers"]
            if GPU in c.get("resources", {}).get("limits", {})]


# --- rendering and schemas -----------------------------------------------------------------------------------------
def test_kustomize_renders_every_manifest_into_the_namespace(raw_docs, rendered, kustomization):
    def ids(docs):
        return sorted((d["kind"], d["metadata"]["name"]) for d in docs)

    assert ids(rendered) == ids(raw_docs), "kustomize lost or added resources (the settings ConfigMap must not appear)"
    for doc in rendered:
        expected = None if doc["kind"] in CLUSTER_SCOPED else kustomization["namespace"]
        assert doc["metadata"].get("namespace") == expected, f"{doc['kind']} outside the namespace"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(version, rendered, tmp_path):
    rendered_file = tmp_path / "rendered.yaml"
    rendered_file.write_text(yaml.safe_dump_all(rendered))
    files = [str(K8S / name) for name in MANIFESTS] + [str(rendered_file)]
    out = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, *files],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    skipped = [line for line in (out.stdout + out.stderr).splitlines() if "Couldn't find schema" in line]
    assert skipped and all(any(kind in line for kind in CRD_KINDS) for line in skipped), \
        f"only custom resources may be skipped: {skipped}"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_mpijob_pod_templates_validate_as_core_v1(version, raw):
    mpijob = one(raw["horovod-mpijob.yaml"], "MPIJob")
    for label, template in pod_templates(mpijob):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": label.split("/")[-1].lower()},
                   "template": template}
        kubernetes_validate.validate(wrapped, version, strict=True)
    # The same check refuses a template with a misspelt field, so a pass above means something.
    broken = json.loads(json.dumps(wrapped))
    broken["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


# --- what schemas miss ---------------------------------------------------------------------------------------------
def test_job_failure_policy_matches_the_trainers_exit_codes(raw_docs):
    jobs = [j for j in find(raw_docs, "Job") if j["metadata"]["name"] != "cifar-tune"]  # test_k8s_tune.py
    assert {j["metadata"]["name"] for j in jobs} == {"cifar-train", "cifar-train-mw"}
    for job in jobs:
        spec, name = job["spec"], job["metadata"]["name"]
        pod = spec["template"]["spec"]
        # The API rejects a podFailurePolicy unless restartPolicy is Never; schemas accept any of the three.
        assert pod["restartPolicy"] == "Never", name
        assert spec["backoffLimit"] >= 1, f"{name}: crashes need retries to resume"
        containers = {c["name"] for c in pod["containers"]}
        actions: dict[int, str] = {}
        conditions = {}
        for rule in spec["podFailurePolicy"]["rules"]:
            if "onExitCodes" in rule:
                on = rule["onExitCodes"]
                assert on["containerName"] in containers, f"{name}: rule names a container that does not exist"
                assert on["operator"] == "In"
                actions.update({code: rule["action"] for code in on["values"]})
            for condition in rule.get("onPodConditions", []):
                conditions[condition["type"]] = (rule["action"], condition.get("status", "True"))
        assert actions[EXIT_USER_ERROR] == "FailJob", f"{name}: bad input must fail the Job at once"
        assert actions[EXIT_PREEMPTED] == "Ignore", f"{name}: a SIGTERM checkpoint exit must not use up a retry"
        assert EXIT_CRASH not in actions, f"{name}: crashes must count against backoffLimit"
        assert conditions["DisruptionTarget"] == ("Ignore", "True"), f"{name}: preemptions must not use up retries"
        if spec.get("completionMode") == "Indexed":
            assert actions[EXIT_PEER_LOST] == "Ignore", f"{name}: a lost peer is retried without using up a retry"


@pytest.mark.parametrize("source", ["raw", "rendered"])
def test_multiworker_hosts_match_the_indexed_job_and_headless_service(source, raw, rendered):
    from job.distribute.multiworker import tf_config_from_env  # imports TensorFlow

    docs = raw["multiworker.yaml"] if source == "raw" else rendered
    job = one(docs, "Job", "cifar-train-mw")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    service = one(docs, "Service", pod["subdomain"])  # subdomain must name the headless Service
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True, "workers must resolve each other before ready"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no worker pod"
    trainer = next(c for c in pod["containers"] if c["name"] == "trainer")
    port = trainer["ports"][0]["containerPort"]
    assert port in [p["port"] for p in service["spec"]["ports"]]
    job_name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    expected = [f"{job_name}-{i}.{service_name}:{port}" for i in range(spec["completions"])]
    worker_hosts = env_of(trainer)["WORKER_HOSTS"]
    assert worker_hosts.split(",") == expected
    for index in range(spec["completions"]):
        tf_config = tf_config_from_env({"JOB_COMPLETION_INDEX": str(index), "WORKER_HOSTS": worker_hosts})
        assert tf_config == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": index}}


def test_mpijob_launch_settings(raw):
    mpijob = one(raw["horovod-mpijob.yaml"], "MPIJob")
    spec = mpijob["spec"]
    assert set(spec) <= MPIJOB_SPEC_FIELDS, f"unknown MPIJob v2beta1 fields: {set(spec) - MPIJOB_SPEC_FIELDS}"
    assert set(spec["runPolicy"]) <= MPIJOB_RUN_POLICY_FIELDS
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    assert spec["mpiImplementation"] == "OpenMPI"
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    assert set(spec["mpiReplicaSpecs"]) == {"Launcher", "Worker"} and launcher["replicas"] == 1
    for replica in (launcher, worker):
        assert replica["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
    (launcher_container,) = launcher["template"]["spec"]["containers"]
    (worker_container,) = worker["template"]["spec"]["containers"]
    # Kubernetes' SIGTERM reaches mpirun and sshd, not the ranks: both run under the relay (job/relay.py).
    to, launched = relayed(launcher_container)
    assert to == "child-as-usr1" and launched[0] == "mpirun"
    to, served = relayed(worker_container)
    assert to == "descendants" and served[0] == "/usr/sbin/sshd"
    args = launcher_container["args"]
    assert int(args[args.index("-np") + 1]) == worker["replicas"] * spec["slotsPerWorker"]
    assert spec["slotsPerWorker"] == int(worker_container["resources"]["limits"][GPU]), "one rank per GPU"
    # Ranks run in the worker pods: mpirun must forward every setting of the launcher they need (-x NAME).
    forwarded = {args[i + 1] for i, a in enumerate(args) if a == "-x"}
    used_in_args = set(re.findall(r"\$\((\w+)\)", " ".join(args)))
    assert set(env_of(launcher_container)) - used_in_args <= forwarded
    # Workers run the image's non-root sshd; its config (docker/sshd_config) uses the key the operator mounts.
    sshd_config_path = served[served.index("-f") + 1]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^COPY docker/sshd_config {re.escape(sshd_config_path)}$", dockerfile, re.M)
    sshd = dict(line.split(None, 1) for line in (ROOT / "docker" / "sshd_config").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    for key in ("HostKey", "AuthorizedKeysFile"):
        assert sshd[key].startswith(spec["sshAuthMountPath"] + "/"), key
    port = int(sshd["Port"])
    assert worker_container["ports"][0]["containerPort"] == port
    assert worker_container["readinessProbe"]["tcpSocket"]["port"] == port, "WaitForWorkersReady needs sshd up"
    ssh_config = (ROOT / "docker" / "ssh_config").read_text()
    assert re.search(rf"^\s*Port {port}$", ssh_config, re.M), "the launcher's ssh must use the workers' sshd port"
    assert spec["sshAuthMountPath"] == env_of(launcher_container)["HOME"] + "/.ssh"


def test_trainer_commands_parse_and_their_config_loads(trainers):
    from job.config import PRESET_DIR

    assert sorted(t.label for t in trainers) == ["Job/cifar-train", "Job/cifar-train-mw",
                                                 "MPIJob/cifar-train-hvd/Launcher"]
    presets = list_presets()
    for t in trainers:
        unresolved = re.findall(r"\$\(\w+\)", " ".join(t.argv))
        assert not unresolved, f"{t.label}: {unresolved} name no env var of the container (Kubernetes keeps them as is)"
        cfg = t.cfg
        base = yaml.safe_load(t.config_text).get("base")
        assert base in presets, f"{t.label}: its config's base {base!r} is not a preset in {PRESET_DIR}"
        preset = load_config(base)
        assert (cfg.model.name, cfg.data.name) == (preset.model.name, preset.data.name), t.label
        assert cfg.run_dir.startswith("gs://") and cfg.data.dir.startswith("gs://"), t.label
        volume = mount_for(cfg.run.work_dir, *t.runs_in) if cfg.run.work_dir else None
        assert volume and "emptyDir" in volume, f"{t.label}: run.work_dir must be on an emptyDir"
        assert cfg.train.batch_size % replicas(t) == 0, f"{t.label}: batch {cfg.train.batch_size} over {replicas(t)}"
    backends = {t.label: t.cfg.distribute.backend for t in trainers}
    assert backends == {"Job/cifar-train": "auto", "Job/cifar-train-mw": "multiworker",
                        "MPIJob/cifar-train-hvd/Launcher": "horovod"}
    run_dirs = [t.cfg.run_dir for t in trainers]
    assert len(set(run_dirs)) == len(run_dirs), "two workloads would write into the same run directory"


def config_maps_with_configs(docs: list[dict]) -> list[tuple[str, str, str]]:
    """(ConfigMap name, file name, text) of every config file a ConfigMap carries."""
    return [(d["metadata"]["name"], key, text) for d in find(docs, "ConfigMap")
            for key, text in d.get("data", {}).items() if key.endswith((".yaml", ".yml"))]


def test_config_maps_state_only_what_differs_from_their_preset(raw_docs, trainers, tmp_path):
    from job.config import from_dict, to_dict

    found = [f for f in config_maps_with_configs(raw_docs) if f[0] != "cifar-tune-space"]  # a space, not a config
    assert {(name, key) for name, key, _ in found} == {(t.config_map["metadata"]["name"], Path(t.args.config).name)
                                                       for t in trainers}, "a ConfigMap config no trainer reads"
    for name, key, text in found:
        tree = yaml.safe_load(text)
        assert "base" in tree, f"{name}/{key}: name the preset it starts from with `base:`"
        stated = {k: v for k, v in tree.items() if k not in ("base", "preset")}  # preset: the run's name
        path = tmp_path / key
        path.write_text(text)
        cfg = load_config(str(path))
        # The preset's config with the stated keys set on top, and nothing else, is what the file loads.
        preset = to_dict(load_config(tree["base"]))
        expected = {**preset, "preset": tree.get("preset", path.stem)}
        for section, values in stated.items():
            for k, v in values.items():
                assert v != preset[section][k], f"{name}/{key}: {section}.{k}={v!r} is the preset's value already"
            expected[section] = {**preset[section], **values}
        assert cfg == from_dict(expected), f"{name}/{key}"


def test_grace_period_covers_the_sigterm_checkpoint(trainers, raw_docs):
    for t in trainers:
        budget = t.cfg.checkpoint.upload_timeout_seconds + SIGTERM_MARGIN_SECONDS
        # The pods that receive SIGTERM are the ones running the ranks: for an MPIJob, its workers.
        pods = [tpl for label, tpl in pod_templates(t.workload)] if t.workload["kind"] == "MPIJob" else [t.template]
        for template in pods:
            grace = template["spec"]["terminationGracePeriodSeconds"]
            assert grace >= budget, f"{t.label}: grace {grace} s < SIGTERM budget {budget} s"


def test_every_pod_is_hardened_and_writes_only_to_emptydirs(raw_docs):
    uid, gid, image_home = image_user()
    templates = all_pod_templates(raw_docs)
    assert len(templates) == 7
    for label, template in templates:
        assert_pod_hardened(label, template["spec"], uid, gid, image_home)


def assert_pod_hardened(label: str, pod: dict, uid: int, gid: int, image_home: str) -> None:
    """The image's non-root user, no privilege, a read-only root, no API token; writes only to emptyDirs (also the
    KServe custom predictor's pod: tests/integration/test_k8s_kserve.py)."""
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"]["type"] == "RuntimeDefault", label
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid), f"{label}: not the image's user"
    assert pod["automountServiceAccountToken"] is False, label
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, label
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"], label
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault", label
        # Where the container writes: its HOME and TMPDIR (the image's when not set), and any cache dirs set.
        env = env_of(container)
        paths = {"HOME": image_home, "TMPDIR": "/tmp"}
        paths.update({k: v for k, v in env.items() if k in ("HOME", "TMPDIR", "KERAS_HOME", "XDG_CACHE_HOME")})
        for name, path in paths.items():
            volume = mount_for(path, pod, container)
            assert volume and "emptyDir" in volume, f"{label}: {name}={path} is not on a writable emptyDir"


def test_training_pods_get_gpus_tolerations_and_shared_memory(raw_docs):
    gpu_containers = gpu_pod_templates(raw_docs)
    assert sorted(label for label, _, _ in gpu_containers) == ["Job/cifar-train", "Job/cifar-train-mw",
                                                               "Job/cifar-tune", "MPIJob/cifar-train-hvd/Worker"]
    for label, template, container in gpu_containers:
        resources = container["resources"]
        assert resources["requests"][GPU] == resources["limits"][GPU], label
        assert resources["requests"] == resources["limits"], f"{label}: Guaranteed QoS wants requests == limits"
        tolerations = template["spec"]["tolerations"]
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in tolerations, label
        volume = mount_for("/dev/shm", template["spec"], container)
        assert volume and volume["emptyDir"].get("medium") == "Memory", f"{label}: /dev/shm must be a Memory emptyDir"


def test_references_resolve_within_k8s(rendered):
    """Names that only the API server would resolve: a typo passes every schema and fails at run time."""
    statefulsets = find(rendered, "StatefulSet")
    templates = all_pod_templates(rendered) + [(f"StatefulSet/{d['metadata']['name']}", d["spec"]["template"])
                                               for d in statefulsets]
    claims = {f"StatefulSet/{d['metadata']['name']}": {c["metadata"]["name"] for c in d["spec"]["volumeClaimTemplates"]}
              for d in statefulsets}
    for label, template in templates:
        pod = template["spec"]
        if "serviceAccountName" in pod:
            one(rendered, "ServiceAccount", pod["serviceAccountName"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                one(rendered, "ConfigMap", volume["configMap"]["name"])
        for container in pod["containers"]:
            names = {v["name"] for v in pod.get("volumes", [])} | claims.get(label, set())
            assert {m["name"] for m in container.get("volumeMounts", [])} <= names, label
    pods = {label: template["metadata"]["labels"] for label, template in templates}
    for service in find(rendered, "Service"):
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pods.values())
    policies = find(rendered, "NetworkPolicy")
    for label, labels in pods.items():
        assert any(p["spec"]["podSelector"]["matchLabels"].items() <= labels.items() for p in policies), \
            f"{label}: no NetworkPolicy selects it"


def test_images_agree_across_manifests_and_kustomization(raw_docs, rendered, kustomization):
    (image,) = kustomization["images"]
    raw_images = {c["image"] for _, t in all_pod_templates(raw_docs) for c in t["spec"]["containers"]}
    assert raw_images == {f"{image['name']}:{image['newTag']}"}
    rendered_images = {c["image"] for _, t in all_pod_templates(rendered) for c in t["spec"]["containers"]}
    assert rendered_images == {f"{image['newName']}:{image['newTag']}"}


def gs_urls(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [u for v in node.values() for u in gs_urls(v)]
    if isinstance(node, list):
        return [u for v in node for u in gs_urls(v)]
    return re.findall(r"gs://[^\s\"']+", node) if isinstance(node, str) else []


def copy_with_namespace_and_image(tmp_path) -> dict:
    """The manifests copied into `tmp_path`; their kustomization, with a namespace and an image of a test's own,
    returned for further changes (write it back before rendering)."""
    for name in (*MANIFESTS, "kustomization.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(K8S / name, tmp_path / name)
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    kustomization["namespace"] = "ns-under-test"
    kustomization["images"][0].update(newName="registry.test/team/trainer", newTag="7.7.7")
    return kustomization


def test_bucket_image_namespace_and_accounts_are_set_in_one_place(raw_docs, tmp_path):
    kustomization = copy_with_namespace_and_image(tmp_path)
    (generator,) = kustomization["configMapGenerator"]
    generator["literals"] = [
        "bucket=bucket-under-test",
        "trainer-service-account=trainer@project-under-test.iam.gserviceaccount.com",
        "tensorboard-service-account=viewer@project-under-test.iam.gserviceaccount.com",
        "serve-service-account=server@project-under-test.iam.gserviceaccount.com",
    ]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = kustomize(tmp_path)

    urls = gs_urls(docs)
    assert len(urls) == len(gs_urls(raw_docs)) >= 5, "a gs:// URL was lost or added"
    assert all(u.startswith("gs://bucket-under-test/") for u in urls), urls
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] not in CLUSTER_SCOPED} == {"ns-under-test"}
    images = {c["image"] for _, t in all_pod_templates(docs) for c in t["spec"]["containers"]}
    assert images == {"registry.test/team/trainer:7.7.7"}
    accounts = {d["metadata"]["name"]: d["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
                for d in find(docs, "ServiceAccount") if d["metadata"].get("annotations")}
    assert accounts == {"cifar-trainer": "trainer@project-under-test.iam.gserviceaccount.com",
                        "cifar-tensorboard": "viewer@project-under-test.iam.gserviceaccount.com",
                        "cifar-serve": "server@project-under-test.iam.gserviceaccount.com"}
    serve, train = (env_of(template["spec"]["containers"][0])["RUN_DIR"]
                    for _, template in (*pod_templates(one(docs, "Deployment", "cifar-serve")),
                                        *pod_templates(one(docs, "Job", "cifar-train"))))
    assert serve == train, "the served run must follow the training Job's when the bucket changes"


def test_tensorboard_serves_the_runs_of_every_workload(raw_docs, trainers):
    deployment = one(raw_docs, "Deployment", "cifar-tensorboard")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    args = [expand(a, env) for a in container["args"]]
    assert container["command"] == ["tensorboard"] and "--bind_all" in args
    logdir = args[args.index("--logdir") + 1]
    for t in trainers:
        assert t.cfg.run_dir.startswith(logdir.rstrip("/") + "/"), f"TensorBoard does not see {t.cfg.run_dir}"
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port


# --- serving (issue 13) --------------------------------------------------------------------------------------------
SERVE_PROBES = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
# The kubelet's defaults for the probe fields a manifest leaves out.
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}


def serve_parts(docs: list[dict]) -> tuple[dict, dict, dict]:
    """(the serving Deployment, its pod template, its one container)."""
    deployment = one(docs, "Deployment", "cifar-serve")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return deployment, template, container


def port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's port, a number or the name of one of the container's ports, as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def serve_args(container: dict):
    """The container's command line as the kubelet runs it ($(VAR) expanded), parsed by job/cli.py."""
    env = env_of(container)
    words = [expand(w, env) for w in container_argv(container)]
    assert words[:len(JOB_COMMAND) + 1] == [*JOB_COMMAND, "serve"], f"not `python -m job serve`: {words}"
    unresolved = re.findall(r"\$\(\w+\)", " ".join(words))
    assert not unresolved, f"{unresolved} name no env var of the container (Kubernetes keeps them as is)"
    try:
        return build_parser().parse_args(words[len(JOB_COMMAND):])
    except SystemExit:
        pytest.fail(f"`{' '.join(words)}` is not a valid command line (see above)")


@pytest.mark.parametrize("source", ["raw", "rendered"])
def test_serve_runs_python_m_job_serve_on_the_training_jobs_run(source, raw, rendered, trainers):
    docs = raw["serve.yaml"] + raw["job.yaml"] if source == "raw" else rendered
    _, _, container = serve_parts(docs)
    args = serve_args(container)
    assert args.model is None and args.run_dir.startswith("gs://"), "the run is read from the bucket"
    _, job_template = next(pod_templates(one(docs, "Job", "cifar-train")))
    trainer = next(c for c in job_template["spec"]["containers"] if c["name"] == "trainer")
    assert args.run_dir == env_of(trainer)["RUN_DIR"], "serve.yaml must serve the run k8s/job.yaml trains"
    (job,) = [t for t in trainers if t.label == "Job/cifar-train"]
    assert args.run_dir == job.cfg.run_dir
    if args.checkpoint == "best":
        assert job.cfg.data.validation_split > 0, "--checkpoint best needs a run with a validation split"
    assert args.host == "0.0.0.0", "in a pod the server must listen beyond loopback"
    assert [p["containerPort"] for p in container["ports"]] == [args.port]


@pytest.mark.parametrize("source", ["raw", "rendered"])
def test_serve_probes_service_and_policies_point_at_the_servers_port(source, raw, rendered):
    docs = raw["serve.yaml"] + raw["serve-hpa.yaml"] if source == "raw" else rendered
    deployment, template, container = serve_parts(docs)
    port = serve_args(container).port
    for kind, path in SERVE_PROBES.items():
        get = container[kind]["httpGet"]
        assert get["path"] == path and port_number(container, get["port"]) == port, kind
        assert get.get("scheme", "HTTP") == "HTTP", kind
    startup, readiness, liveness = ({**PROBE_DEFAULTS, **container[kind]} for kind in SERVE_PROBES)
    # The server listens before TensorFlow is imported; on a busy node even that can take a while.
    assert startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # The model loads behind /readyz (tens of seconds); traffic should follow soon after it is ready.
    assert readiness["periodSeconds"] <= 10
    # A prediction of 30 images keeps the CPUs busy; /healthz must not restart a pod for being busy for a while.
    assert liveness["timeoutSeconds"] >= 3 and liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    labels = template["metadata"]["labels"]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # The autoscaler owns the replica count (k8s/serve-hpa.yaml): a `replicas` here would reset it at every apply.
    assert "replicas" not in spec and spec["strategy"]["type"] == "RollingUpdate"
    autoscaler = one(docs, "HorizontalPodAutoscaler", "cifar-serve")["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cifar-serve"}
    assert 2 <= autoscaler["minReplicas"] < autoscaler["maxReplicas"]
    (cpu,) = [m["resource"] for m in autoscaler["metrics"] if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and 0 < cpu["target"]["averageUtilization"] <= 100
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "a rollout waits for each new pod to be ready"
    service = one(docs, "Service", "cifar-serve")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 80 and port_number(container, service_port["targetPort"]) == port
    selector = service["spec"]["selector"]
    selected = [label for label, other in all_pod_templates(docs)
                if selector.items() <= other["metadata"].get("labels", {}).items()]
    assert selected == ["Deployment/cifar-serve"], f"the Service selects {selected}"
    policy = one(docs, "NetworkPolicy", "cifar-serve")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [port]
    budget = one(docs, "PodDisruptionBudget", "cifar-serve")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] < autoscaler["minReplicas"], "a drain must leave a replica serving"


def test_serve_is_hardened_like_the_training_job_and_cpu_only(raw, raw_docs):
    from job.serve import TOKEN_ENV

    docs = raw["serve.yaml"]
    deployment, template, container = serve_parts(docs)
    pod = template["spec"]
    job_pod = one(raw["job.yaml"], "Job")["spec"]["template"]["spec"]
    trainer = next(c for c in job_pod["containers"] if c["name"] == "trainer")
    assert pod["securityContext"] == job_pod["securityContext"]
    assert container["securityContext"] == trainer["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    for writable in ("HOME", "TMPDIR"):  # where the run's working copy and caches go (also checked for every pod)
        assert env_of(container)[writable] == env_of(trainer)[writable]
    # Its own Google service account, which only reads the bucket; the trainer's writes.
    account = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert pod["serviceAccountName"] != job_pod["serviceAccountName"]
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    # CPU only, with requests and limits; not a batch workload, so not queued by Kueue.
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert 0 < quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind]), kind
    assert not [r for amounts in resources.values() for r in amounts if r not in ("cpu", "memory")], resources
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert QUEUE_LABEL not in deployment["metadata"]["labels"] and QUEUE_LABEL not in template["metadata"]["labels"]
    # TensorFlow's thread pool follows the container's own CPU limit, not the node's cores.
    threads = next(e for e in container["env"] if e["name"] == "TF_NUM_INTRAOP_THREADS")["valueFrom"]
    assert threads["resourceFieldRef"] == {"containerName": container["name"], "resource": "limits.cpu"}
    # The token: from a Secret the user creates, optional; never a Secret (a credential) in the repository.
    token = next(e for e in container["env"] if e["name"] == TOKEN_ENV)
    assert "value" not in token and token["valueFrom"]["secretKeyRef"]["optional"] is True
    # (k8s/tune.yaml's Secret holds a database URL without its password: tests/integration/test_k8s_tune.py checks.)
    assert not [s for s in find(raw_docs, "Secret") if s["metadata"]["name"] != "cifar-tune-storage"]


def test_serve_rehearsal_runs_the_deployments_pod_with_only_its_listed_changes(raw):
    """tests/rehearsal/rehearse_serve.py (`make rehearse`): what podman runs is serve.yaml's pod template."""
    from tests.rehearsal.rehearse_serve import TOKEN_ENV, serve_pod

    _, template, original = serve_parts(raw["serve.yaml"])
    pod, manifest_port = serve_pod(K8S / "serve.yaml", image="localhost/cifar-job:test", run_dir="gs://b/r",
                                   storage_emulator_host="http://127.0.0.1:4443", port=45678, token="t" * 16)
    (container,) = pod["spec"]["containers"]
    assert manifest_port == serve_args(original).port
    args = serve_args(container)
    assert (args.run_dir, args.host, args.port, args.checkpoint) == ("gs://b/r", "127.0.0.1", 45678,
                                                                     serve_args(original).checkpoint)
    for key in ("securityContext", "volumeMounts", "name", "lifecycle"):  # resources: cpu capped on small hosts
        if key == "volumeMounts":
            assert [m["mountPath"] for m in container[key]] == [m["mountPath"] for m in original[key]]
        else:
            assert container[key] == original[key], key
    kept = {k: v for k, v in pod["spec"].items() if k not in ("containers", "volumes", "hostNetwork")}
    assert kept == {k: v for k, v in template["spec"].items() if k not in ("containers", "volumes")}
    env = {e["name"]: e for e in container["env"]}
    assert env[TOKEN_ENV] == {"name": TOKEN_ENV, "value": "t" * 16}
    assert env["STORAGE_EMULATOR_HOST"]["value"] == "http://127.0.0.1:4443"
    for item in original["env"]:
        if item["name"] not in ("RUN_DIR", TOKEN_ENV):
            assert env[item["name"]] == item, item["name"]
    assert not set(SERVE_PROBES) & set(container) and "ports" not in container


# --- checkov -------------------------------------------------------------------------------------------------------
def checkov_failures() -> dict[str, set[str]]:
    """check id -> resources that fail it, over k8s/ and docker/, with no skips applied."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [checkov_path(), "-d", "k8s", "-d", "docker", "--framework", "kubernetes", "dockerfile", "secrets",
         "--skip-download", "--quiet", "-o", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.stdout.strip(), f"checkov printed nothing (exit {out.returncode}):\n{out.stderr[-3000:]}"
    failures: dict[str, set[str]] = {}
    decoder, text, at = json.JSONDecoder(), out.stdout, 0
    while at < len(text):  # one JSON document per -d directory
        if text[at].isspace():
            at += 1
            continue
        report, at = decoder.raw_decode(text, at)
        for framework in report if isinstance(report, list) else [report]:
            for check in framework.get("results", {}).get("failed_checks", []):
                failures.setdefault(check["check_id"], set()).add(f"{check['file_path']}: {check['resource']}")
    return failures


@pytest.mark.slow
@pytest.mark.timeout(600)  # checkov over every manifest
def test_checkov_fails_only_the_listed_skips():
    skips = yaml.safe_load((K8S / "checkov-skips.yaml").read_text())["skips"]
    for skip in skips:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", skip["id"]), skip
        assert len(skip.get("reason", "").split()) >= 8, f"{skip['id']}: give the reason"
    listed = {s["id"] for s in skips}
    failures = checkov_failures()
    unlisted = {check: sorted(resources) for check, resources in failures.items() if check not in listed}
    assert not unlisted, f"checkov failures not in k8s/checkov-skips.yaml: {json.dumps(unlisted, indent=1)}"
    stale = listed - set(failures)
    assert not stale, f"k8s/checkov-skips.yaml lists checks that pass now; remove {sorted(stale)}"


# --- JobSet and Kueue (issue 15) -----------------------------------------------------------------------------------
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOBSET_SPEC_FIELDS = {"replicatedJobs", "network", "successPolicy", "failurePolicy", "startupPolicy", "suspend",
                      "coordinator", "managedBy", "ttlSecondsAfterFinished"}
JOBSET_ACTIONS = {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"}
JOB_FAILURE_REASONS = {"BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes", "MaxFailedIndexesExceeded",
                       "PodFailurePolicy"}
NODE_LOST = "node lost"  # a pod failure with the DisruptionTarget condition and no exit code of the trainer's own


def jobset_workers(jobset: dict) -> tuple[dict, dict]:
    """(the replicated job, its pod template) of the JobSet's single replicated job."""
    (replicated,) = jobset["spec"]["replicatedJobs"]
    return replicated, replicated["template"]["spec"]["template"]


def jobset_reaction(jobset: dict, failure: int | str) -> str:
    """What the Job and JobSet controllers do when one worker pod fails with `failure` (an exit code of the trainer
    container, or NODE_LOST): the child Job's podFailurePolicy (first matching rule) and backoffLimit give the Job's
    failure reason, or none; the JobSet's failurePolicy rules (first match; RestartJobSet when none) give the action.
    Modelled on the documented behaviour of batch/v1 Job and JobSet v1alpha2, for the fields these manifests use."""
    replicated, _ = jobset_workers(jobset)
    job = replicated["template"]["spec"]
    reason = None
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        on_codes, on_conditions = rule.get("onExitCodes"), rule.get("onPodConditions", [])
        matches = False
        if on_codes and isinstance(failure, int) and on_codes.get("containerName", "trainer") == "trainer":
            matches = (failure in on_codes["values"]) == (on_codes["operator"] == "In")
        if failure == NODE_LOST and any(c["type"] == "DisruptionTarget" and c.get("status", "True") == "True"
                                        for c in on_conditions):
            matches = True
        if matches:
            if rule["action"] == "FailJob":
                reason = "PodFailurePolicy"
            elif rule["action"] == "Ignore":
                return "pod replaced alone"  # the gang stays half up: what a JobSet is meant to avoid
            break
    if reason is None:  # Count (the default): this failure is one more against backoffLimit
        if job.get("backoffLimit", 6) >= 1:
            return "pod retried alone"
        reason = "BackoffLimitExceeded"
    for rule in jobset["spec"].get("failurePolicy", {}).get("rules", []):
        targets = rule.get("targetReplicatedJobs") or [replicated["name"]]
        if replicated["name"] in targets and reason in rule.get("onJobFailureReasons", [reason]):
            return rule["action"]
    return "RestartJobSet"


def test_jobset_failure_policy_fails_at_once_on_bad_input_and_restarts_the_gang_otherwise(raw):
    jobset = one(raw["jobset.yaml"], "JobSet")
    spec = jobset["spec"]
    assert set(spec) <= JOBSET_SPEC_FIELDS, f"unknown JobSet fields: {set(spec) - JOBSET_SPEC_FIELDS}"
    replicated, template = jobset_workers(jobset)
    names = {r["name"] for r in spec["replicatedJobs"]}
    policy = spec["failurePolicy"]
    assert policy["maxRestarts"] >= 3, "preemptions count as restarts: leave room for several"
    for rule in policy["rules"]:
        assert rule["action"] in JOBSET_ACTIONS, rule
        assert set(rule.get("onJobFailureReasons", [])) <= JOB_FAILURE_REASONS, rule
        assert set(rule.get("targetReplicatedJobs", [])) <= names, f"{rule['name']}: targets no replicated job"
        assert re.fullmatch(r"[a-zA-Z]([-_a-zA-Z0-9]*[a-zA-Z0-9])?", rule["name"]), rule["name"]
    assert template["spec"]["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy: Never"
    assert jobset_reaction(jobset, EXIT_USER_ERROR) == "FailJobSet", "bad input must fail at once"
    for failure in (EXIT_PEER_LOST, NODE_LOST, EXIT_PREEMPTED, EXIT_CRASH, 137):
        assert jobset_reaction(jobset, failure) == "RestartJobSet", f"{failure}: the whole gang must restart"
    # The model above means something: a Job that ignores a lost peer would leave the gang half up.
    broken = json.loads(json.dumps(jobset))
    jobset_workers(broken)[0]["template"]["spec"]["podFailurePolicy"]["rules"].append(
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [EXIT_PEER_LOST]}})
    assert jobset_reaction(broken, EXIT_PEER_LOST) == "pod replaced alone"


def test_jobset_succeeds_when_every_worker_has(raw):
    jobset = one(raw["jobset.yaml"], "JobSet")
    replicated, _ = jobset_workers(jobset)
    success = jobset["spec"]["successPolicy"]
    assert success["operator"] == "All" and success["targetReplicatedJobs"] == [replicated["name"]]
    job = replicated["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] >= 2


@pytest.mark.parametrize("source", ["raw", "rendered"])
def test_jobset_worker_hosts_are_the_jobsets_dns_names(source, raw, rendered):
    from job.distribute.multiworker import tf_config_from_env  # imports TensorFlow

    docs = raw["jobset.yaml"] if source == "raw" else rendered
    jobset = one(docs, "JobSet")
    replicated, template = jobset_workers(jobset)
    network = jobset["spec"]["network"]
    assert network["enableDNSHostnames"] is True and network["publishNotReadyAddresses"] is True
    assert "subdomain" not in template["spec"], "the JobSet controller sets the pods' subdomain from network"
    trainer = next(c for c in template["spec"]["containers"] if c["name"] == "trainer")
    port = trainer["ports"][0]["containerPort"]
    job = replicated["template"]["spec"]
    # Pod host names: <jobset>-<replicated job>-<job index>-<completion index>, under the subdomain's Service.
    expected = [f"{jobset['metadata']['name']}-{replicated['name']}-{j}-{i}.{network['subdomain']}:{port}"
                for j in range(replicated["replicas"]) for i in range(job["completions"])]
    worker_hosts = env_of(trainer)["WORKER_HOSTS"]
    assert worker_hosts.split(",") == expected
    assert replicated["replicas"] == 1, "JOB_COMPLETION_INDEX restarts at 0 in every child Job"
    for index in range(job["completions"]):
        tf_config = tf_config_from_env({"JOB_COMPLETION_INDEX": str(index), "WORKER_HOSTS": worker_hosts})
        assert tf_config["task"] == {"type": "worker", "index": index}
    policy = one(docs, "NetworkPolicy", jobset["metadata"]["name"])
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (peers,) = policy["spec"]["ingress"][0]["from"]
    assert peers["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    # No other workload's Service or NetworkPolicy selects these pods (multiworker.yaml's must not).
    for other in find(docs, "Service") + find(docs, "NetworkPolicy"):
        if other["metadata"]["name"] != jobset["metadata"]["name"]:
            selector = other["spec"].get("selector") or other["spec"]["podSelector"].get("matchLabels", {})
            assert not selector.items() <= template["metadata"]["labels"].items(), other["metadata"]["name"]


def test_jobset_pod_template_is_multiworkers_but_for_what_the_controller_provides(raw):
    """Same image, command, args, env, resources, hardening, service account, grace period and volumes: the checks
    of multiworker.yaml's template above hold for the JobSet's. Only these may differ: the pods' name label (their
    own Service and NetworkPolicy), the subdomain (the JobSet sets it), the anti-affinity's selector (its own pods),
    WORKER_HOSTS (the JobSet's DNS names) and RUN_DIR (a run of its own)."""
    mw_job = one(raw["multiworker.yaml"], "Job")
    _, js_template = jobset_workers(one(raw["jobset.yaml"], "JobSet"))
    mw, js = json.loads(json.dumps(mw_job["spec"]["template"])), json.loads(json.dumps(js_template))
    mw_name, js_name = (t["metadata"]["labels"]["app.kubernetes.io/name"] for t in (mw, js))
    assert mw_name != js_name
    for template, name in ((mw, mw_name), (js, js_name)):
        labels = template["metadata"]["labels"]
        assert labels.pop("app.kubernetes.io/name") == name
        labels.pop("app.kubernetes.io/component")
        template["spec"].pop("subdomain", None)
        term = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}, "anti-affinity to itself"
        term.pop("labelSelector")
        (trainer,) = template["spec"]["containers"]
        env = {e["name"]: e for e in trainer["env"]}
        env["WORKER_HOSTS"]["value"] = env["RUN_DIR"]["value"] = "(own)"
    mw_run, js_run = (env_of(t["spec"]["containers"][0])["RUN_DIR"] for t in (mw_job["spec"]["template"], js_template))
    assert mw_run != js_run and js_run.startswith("gs://"), "the JobSet must not train into multiworker.yaml's run"
    assert js == mw


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_jobset_pod_template_validates_as_core_v1(version, raw):
    _, template = jobset_workers(one(raw["jobset.yaml"], "JobSet"))
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "workers"}, "template": template}
    kubernetes_validate.validate(wrapped, version, strict=True)
    replicated, _ = jobset_workers(one(raw["jobset.yaml"], "JobSet"))
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "workers"},
           "spec": replicated["template"]["spec"]}
    kubernetes_validate.validate(job, version, strict=True)  # the child Job's own fields (podFailurePolicy, ...)
    broken = json.loads(json.dumps(job))
    rule = broken["spec"]["podFailurePolicy"]["rules"][0]
    rule["onExitCode"] = rule.pop("onExitCodes")  # a misspelt field: the same check must refuse it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity as a number (cpu cores, bytes, devices)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    assert match and match.group(2) in ("", *units), f"cannot read quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def gang_requests(workload: dict) -> dict[str, float]:
    """Everything a workload's pods request at once: what Kueue must admit together."""
    kind, spec = workload["kind"], workload["spec"]
    if kind == "Job":
        pods = [(spec.get("parallelism", 1), spec["template"])]
    elif kind == "MPIJob":
        pods = [(r.get("replicas", 1), r["template"]) for r in spec["mpiReplicaSpecs"].values()]
    elif kind == "JobSet":
        pods = [(r.get("replicas", 1) * r["template"]["spec"].get("parallelism", 1), r["template"]["spec"]["template"])
                for r in spec["replicatedJobs"]]
    else:
        raise AssertionError(kind)
    total: dict[str, float] = {}
    for count, template in pods:
        for container in template["spec"]["containers"]:
            for resource, value in container.get("resources", {}).get("requests", {}).items():
                total[resource] = total.get(resource, 0.0) + count * quantity(value)
    return total


def test_every_training_workload_is_queued_by_kueue_and_fits_the_quota(rendered, kustomization):
    workloads = find(rendered, "Job") + find(rendered, "MPIJob") + find(rendered, "JobSet")
    assert sorted(w["metadata"]["name"] for w in workloads) == ["cifar-train", "cifar-train-hvd", "cifar-train-js",
                                                              "cifar-train-mw", "cifar-tune"]
    local = one(rendered, "LocalQueue")
    cluster = one(rendered, "ClusterQueue", local["spec"]["clusterQueue"])
    namespace = kustomization["namespace"]
    assert local["metadata"]["namespace"] == namespace
    assert cluster["spec"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
    quota: dict[str, float] = {}
    for group in cluster["spec"]["resourceGroups"]:
        for flavor in group["flavors"]:
            one(rendered, "ResourceFlavor", flavor["name"])
            names = [r["name"] for r in flavor["resources"]]
            assert names == group["coveredResources"], "Kueue wants every covered resource in every flavor, in order"
            for resource in flavor["resources"]:
                quota[resource["name"]] = quota.get(resource["name"], 0.0) + quantity(resource["nominalQuota"])
    assert quota.get(GPU, 0) >= 1
    for workload in workloads:
        name = workload["metadata"]["name"]
        # On the workload itself: Kueue reads it there (on a pod template it would queue single pods).
        assert workload["metadata"]["labels"].get(QUEUE_LABEL) == local["metadata"]["name"], name
        for resource, amount in gang_requests(workload).items():
            assert resource in quota, f"{name} requests {resource}, which the ClusterQueue does not cover"
            assert amount <= quota[resource], f"{name} needs {amount:g} {resource}: it would never be admitted"


def test_kueue_queue_follows_the_namespace_and_cluster_scoped_kinds_have_none(tmp_path):
    kustomization = copy_with_namespace_and_image(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = kustomize(tmp_path)
    cluster = one(docs, "ClusterQueue")
    assert cluster["spec"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ns-under-test"}
    for kind in CLUSTER_SCOPED:
        assert "namespace" not in one(docs, kind)["metadata"], f"{kind} is cluster-scoped"
    assert one(docs, "LocalQueue")["metadata"]["namespace"] == "ns-under-test"
    _, template = jobset_workers(one(docs, "JobSet"))
    assert {c["image"] for c in template["spec"]["containers"]} == {"registry.test/team/trainer:7.7.7"}


# --- the folder component (k8s/components/folder: docs/own-images.md) -------------------------------------------------
@pytest.fixture(scope="module")
def folder_rendered(tmp_path_factory) -> tuple[list[dict], str]:
    """k8s/ rendered with `components: [components/folder]` and a bucket of the test's own; and that bucket."""
    copy = tmp_path_factory.mktemp("k8s-folder") / "k8s"
    shutil.copytree(K8S, copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["components"] = ["components/folder"]
    (generator,) = kustomization["configMapGenerator"]
    generator["literals"] = [v if not v.startswith("bucket=") else "bucket=bucket-under-test"
                             for v in generator["literals"]]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(copy), "bucket-under-test"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_folder_component_renders_valid_hardened_manifests(version, folder_rendered, rendered, tmp_path):
    docs, _ = folder_rendered
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in rendered), "the component adds or loses resources"
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    uid, gid, image_home = image_user()
    templates = all_pod_templates(docs)
    assert len(templates) == 7
    for label, template in templates:
        assert_pod_hardened(label, template["spec"], uid, gid, image_home)


def test_folder_component_trains_every_workload_on_the_bucket_folder_with_the_cache_in_the_bucket(
        folder_rendered, tmp_path):
    docs, bucket = folder_rendered
    images = "gs://bucket-under-test/images/leaves"
    trainers = [Trainer(d, label, t, c, docs, tmp_path) for d in docs for label, t in pod_templates(d)
                for c in t["spec"]["containers"] if (job_argv(c) or [""])[0] == "train"]
    assert sorted(t.label for t in trainers) == ["Job/cifar-train", "Job/cifar-train-mw",
                                                 "MPIJob/cifar-train-hvd/Launcher"]
    jobset = one(docs, "JobSet")["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(jobset)["DATA_DIR"] == images and "data.dir=$(DATA_DIR)" in jobset["args"]
    for t in trainers:
        data = t.cfg.data
        assert (data.name, data.dir) == ("folder", images), t.label
        # Decoded once into a bucket prefix every run and worker shares (its bucket is one of the component's EDITs).
        assert data.cache_dir == "gs://YOUR_BUCKET/images/decoded", t.label
    tuner = one(docs, "Job", "cifar-tune")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args([expand(a, env_of(tuner)) for a in container_argv(tuner)[len(JOB_COMMAND):]])
    tune_cfg = load_config(args.config, args.overrides)
    assert (tune_cfg.data.name, tune_cfg.data.dir) == ("folder", images)
    assert tune_cfg.data.cache_dir == trainers[0].cfg.data.cache_dir
