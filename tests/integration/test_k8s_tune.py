"""Static checks of k8s/tune.yaml (issue 14): the Indexed Job of trial workers, its study database (the Secret and the
small PostgreSQL StatefulSet) and the search space ConfigMap, checked against the code they must agree with: the CLI
(job/cli.py), the space parser (job/tune/space.py), the storage variable (job/tune/study.py), the config loader and
k8s/job.yaml's hardening. Plus the tools tests/integration/test_k8s.py applies to every manifest (kustomize,
kubernetes-validate, checkov), with its helpers. The init container's wait script also runs here, against a real
PostgreSQL.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from job.cli import build_parser
from job.config import list_presets, load_config
from job.errors import EXIT_CRASH, EXIT_PREEMPTED, EXIT_USER_ERROR
from tests.integration.test_k8s import (
    GPU,
    K8S,
    KUBE_VERSIONS,
    QUEUE_LABEL,
    SIGTERM_MARGIN_SECONDS,
    checkov_path,
    env_of,
    expand,
    find,
    gang_requests,
    image_user,
    job_argv,
    kubernetes_validate,
    kustomize,
    mount_for,
    one,
    quantity,
    tool,
)

TUNE = K8S / "tune.yaml"
WORKERS = "cifar-tune"
POSTGRES = "cifar-tune-postgres"
SECRET = "cifar-tune-storage"  # the study database's URL, in the repository
PASSWORD_SECRET = "cifar-tune-db-password"  # its password: made by the user, never in the repository
SPACE_MOUNT = "/etc/tune"
# Only these may differ between the worker pod and job.yaml's trainer pod (besides labels, args, env and volumes).
JOB_POD_FIELDS = ("restartPolicy", "serviceAccountName", "automountServiceAccountToken",
                  "terminationGracePeriodSeconds", "securityContext", "tolerations")
CACHE_ENV = ("HOME", "TMPDIR", "KERAS_HOME", "XDG_CACHE_HOME", "PYTHONUNBUFFERED")


# --- reading the manifest ------------------------------------------------------------------------------------------
def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return load(TUNE)


@pytest.fixture(scope="module")
def job_docs() -> list[dict]:
    return load(K8S / "job.yaml")


def workers(docs: list[dict]) -> dict:
    return one(docs, "Job", WORKERS)


def worker_pod(docs: list[dict]) -> dict:
    return workers(docs)["spec"]["template"]["spec"]


def tuner(docs: list[dict]) -> dict:
    (container,) = worker_pod(docs)["containers"]
    return container


def secret_ref(container: dict, name: str) -> dict:
    (item,) = [e for e in container.get("env", []) if e["name"] == name]
    return item["valueFrom"]["secretKeyRef"]


def secret_data(docs: list[dict], name: str) -> dict[str, str]:
    secret = one(docs, "Secret", name)
    return {**secret.get("stringData", {}), **secret.get("data", {})}


class TuneCommand:
    """The worker container's `python -m job tune ...`, parsed by the real CLI, with its space file and base config."""

    def __init__(self, docs: list[dict], tmp: Path):
        container, pod = tuner(docs), worker_pod(docs)
        self.env = env_of(container)
        self.argv = [expand(a, self.env) for a in job_argv(container)]
        self.args = build_parser().parse_args(self.argv)
        volume = mount_for(self.args.space, pod, container)
        assert volume and "configMap" in volume, f"--space {self.args.space} is not on a ConfigMap volume"
        self.config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
        self.space_text = self.config_map["data"][Path(self.args.space).name]
        self.space_file = tmp / Path(self.args.space).name
        self.space_file.write_text(self.space_text)
        self.overrides = list(self.args.overrides)
        self.cfg = load_config(self.args.config, self.overrides)


@pytest.fixture(scope="module")
def command(docs, tmp_path_factory) -> TuneCommand:
    return TuneCommand(docs, tmp_path_factory.mktemp("tune"))


# --- the workers ---------------------------------------------------------------------------------------------------
def test_workers_are_an_indexed_job_of_k_gpu_workers(docs, command):
    from job.tune.space import load_space

    job = workers(docs)
    spec, pod = job["spec"], worker_pod(docs)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2, "K workers: parallelism and completions together"
    assert spec["parallelism"] <= load_space(str(command.space_file)).trials, "more workers than trials sit idle"
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy: Never"
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["limits"][GPU] == resources["requests"][GPU] == "1", "one GPU per trial worker"
    assert job["metadata"]["labels"][QUEUE_LABEL] == "cifar-queue"


def test_worker_command_parses_and_its_trials_config_loads(docs, command):
    from job.tune.space import check_params_against_config, load_space

    assert command.args.command == "tune" and not command.args.summary
    assert command.args.workers == 1, "one worker per pod: the pods are the workers"
    assert not re.findall(r"\$\(\w+\)", " ".join(command.argv)), "a $(VAR) names no env var of the container"
    assert command.args.config == "cifar10_resnet20" and command.args.config in list_presets()
    assert Path(command.args.space).parent == Path(SPACE_MOUNT)
    assert command.args.study_dir.startswith("gs://") and not command.args.storage, \
        "the storage URL comes from the Secret (JOB_TUNE_STORAGE), not the command line"
    for override in command.overrides:
        assert not override.startswith(("run.dir=", "run.work_dir=")), \
            f"{override}: the tuner gives every trial a run dir (and working copy) of its own"
    cfg = command.cfg
    assert cfg.data.validation_split > 0, "the objective is the best validation top-1: the base needs a split"
    assert cfg.data.dir.startswith("gs://")
    assert cfg.run.progress is False
    # The space's extreme values load with the same base and overrides: what `python -m job tune` checks first.
    check_params_against_config(load_space(str(command.space_file)), command.args.config, command.overrides)


def test_space_is_a_12_trial_lr_and_weight_decay_tpe_search_with_the_median_pruner(command):
    from job.tune.space import load_space

    space = load_space(str(command.space_file))
    assert (space.trials, space.sampler, space.pruner) == (12, "tpe", "median")
    assert {p.key for p in space.params} == {"optim.lr", "optim.weight_decay"}
    preset = load_config(command.args.config)
    for param in space.params:
        assert param.log and param.low > 0, f"{param.key}: searched on a log scale"
        value = {"optim.lr": preset.optim.lr, "optim.weight_decay": preset.optim.weight_decay}[param.key]
        assert param.low < value < param.high, f"{param.key}: the preset's own value {value} is inside the range"


def test_study_dir_is_the_workers_own_and_tensorboard_sees_its_trials(command):
    study_dir = command.args.study_dir.rstrip("/")
    others = [load(K8S / name) for name in ("job.yaml", "multiworker.yaml", "jobset.yaml", "horovod-mpijob.yaml")]
    run_dirs = [e.get("value", "") for ds in others for d in ds for e in _all_env(d) if e["name"] == "RUN_DIR"]
    assert run_dirs, "no RUN_DIR found in the training manifests"
    for run_dir in run_dirs:
        assert not run_dir.rstrip("/").startswith(study_dir) and not study_dir.startswith(run_dir.rstrip("/") + "/"), \
            f"the study dir {study_dir} and the run {run_dir} overlap"
    tensorboard = one(load(K8S / "tensorboard.yaml"), "Deployment", "cifar-tensorboard")
    logdir = env_of(tensorboard["spec"]["template"]["spec"]["containers"][0])["LOGDIR"]
    assert study_dir.startswith(logdir.rstrip("/") + "/"), f"TensorBoard ({logdir}) does not see {study_dir}"


def _all_env(doc) -> list[dict]:
    if isinstance(doc, dict):
        found = list(doc["env"]) if isinstance(doc.get("env"), list) else []
        return found + [e for v in doc.values() for e in _all_env(v)]
    if isinstance(doc, list):
        return [e for v in doc for e in _all_env(v)]
    return []


def test_grace_period_covers_the_sigterm_checkpoint(docs, command):
    budget = command.cfg.checkpoint.upload_timeout_seconds + SIGTERM_MARGIN_SECONDS
    assert worker_pod(docs)["terminationGracePeriodSeconds"] >= budget


def test_failure_policy_matches_the_tuners_exit_codes(docs, job_docs):
    spec = workers(docs)["spec"]
    container = tuner(docs)["name"]
    actions, conditions = {}, {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container
            assert rule["onExitCodes"]["operator"] == "In"
            actions.update({code: rule["action"] for code in rule["onExitCodes"]["values"]})
        for condition in rule.get("onPodConditions", []):
            conditions[condition["type"]] = (rule["action"], condition.get("status", "True"))
    assert actions[EXIT_USER_ERROR] == "FailJob", "a bad space or config fails every worker alike: fail at once"
    assert actions[EXIT_PREEMPTED] == "Ignore", "SIGTERM commits the trial's checkpoint; do not use up a retry"
    assert EXIT_CRASH not in actions and spec["backoffLimit"] >= spec["parallelism"], \
        "crashes count, with room for one per worker at least"
    assert conditions["DisruptionTarget"] == ("Ignore", "True")
    job = one(job_docs, "Job", "cifar-train")["spec"]
    # The same policy as the training Job, but for the container's name.
    renamed = yaml.safe_load(yaml.safe_dump(job["podFailurePolicy"]).replace("containerName: trainer",
                                                                              f"containerName: {container}"))
    assert spec["podFailurePolicy"] == renamed
    assert spec["podReplacementPolicy"] == job["podReplacementPolicy"] == "Failed"


def test_worker_pod_is_hardened_like_job_yaml(docs, job_docs):
    """The same service account (Workload Identity), grace period, pod and container security, resources, image and
    writable emptyDirs as k8s/job.yaml's trainer; the init container is hardened the same way."""
    pod, container = worker_pod(docs), tuner(docs)
    job_template = one(job_docs, "Job", "cifar-train")["spec"]["template"]
    job_pod = job_template["spec"]
    (trainer,) = job_pod["containers"]
    for field in JOB_POD_FIELDS:
        assert pod.get(field) == job_pod.get(field), f"pod {field} differs from job.yaml's"
    for field in ("image", "imagePullPolicy", "resources", "securityContext"):
        assert container[field] == trainer[field], f"container {field} differs from job.yaml's trainer"
    job_env, env = env_of(trainer), env_of(container)
    for name in CACHE_ENV:
        assert env[name] == job_env[name], name
    uid, gid, _ = image_user()
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    for name in ("HOME", "TMPDIR", "KERAS_HOME", "XDG_CACHE_HOME", "/dev/shm"):
        path = env.get(name, name)
        volume, job_volume = mount_for(path, pod, container), mount_for(path, job_pod, trainer)
        assert volume and "emptyDir" in volume, f"{name}={path} is not on a writable emptyDir"
        assert volume["emptyDir"].get("medium") == job_volume["emptyDir"].get("medium"), path
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[SPACE_MOUNT].get("readOnly") is True
    for init in pod.get("initContainers", []):
        assert init["securityContext"] == trainer["securityContext"], init["name"]
        assert init["image"] == trainer["image"], init["name"]
        assert init["resources"]["requests"] == init["resources"]["limits"], init["name"]
        for name in ("HOME", "TMPDIR"):
            volume = mount_for(env_of(init)[name], pod, init)
            assert volume and "emptyDir" in volume, f"{init['name']}: {name} is not on an emptyDir"


def test_workers_fit_the_kueue_quota(docs):
    queue_docs = load(K8S / "kueue" / "queue.yaml")
    cluster = one(queue_docs, "ClusterQueue")
    quota: dict[str, float] = {}
    for group in cluster["spec"]["resourceGroups"]:
        for flavor in group["flavors"]:
            for resource in flavor["resources"]:
                quota[resource["name"]] = quota.get(resource["name"], 0.0) + quantity(resource["nominalQuota"])
    for resource, amount in gang_requests(workers(docs)).items():
        assert amount <= quota[resource], f"the workers need {amount:g} {resource}: Kueue would never admit them"


# --- the study database --------------------------------------------------------------------------------------------
def test_storage_url_and_password_come_from_secrets_and_reach_the_database(docs):
    from sqlalchemy.engine import make_url

    from job.tune.study import STORAGE_ENV

    pod = worker_pod(docs)
    data = secret_data(docs, SECRET)
    assert set(data) == {"url"}, "the URL's Secret holds the URL only"
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        url_ref, password_ref = secret_ref(container, STORAGE_ENV), secret_ref(container, "PGPASSWORD")
        assert (url_ref["name"], url_ref["key"]) == (SECRET, "url"), container["name"]
        assert (password_ref["name"], password_ref["key"]) == (PASSWORD_SECRET, "password"), container["name"]
        assert not url_ref.get("optional") and not password_ref.get("optional"), container["name"]
    # No credential in the repository: the password's Secret is made by the user, as the file's header says.
    assert not find(docs, "Secret", PASSWORD_SECRET)
    assert f"kubectl create secret generic {PASSWORD_SECRET} --from-literal=password=" in TUNE.read_text()
    url = make_url(data["url"])
    assert url.drivername == "postgresql+psycopg", "the psycopg driver requirements.txt pins"
    assert url.password is None, "the password comes from PGPASSWORD, not from the URL"
    # The URL names the StatefulSet's Service, port, database and user.
    service = one(docs, "Service", POSTGRES)
    statefulset = one(docs, "StatefulSet", POSTGRES)
    (postgres,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = env_of(postgres)
    assert url.host == service["metadata"]["name"] == statefulset["spec"]["serviceName"]
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"] == 5432
    assert port["targetPort"] in (5432, postgres["ports"][0]["name"]) and postgres["ports"][0]["containerPort"] == 5432
    assert (url.database, url.username) == (env["POSTGRES_DB"], env["POSTGRES_USER"])
    # The server's password file is the same Secret's key: the workers and the server agree.
    spec = statefulset["spec"]["template"]["spec"]
    volume = mount_for(env["POSTGRES_PASSWORD_FILE"], spec, postgres)
    assert volume["secret"]["secretName"] == PASSWORD_SECRET
    items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
    assert items[Path(env["POSTGRES_PASSWORD_FILE"]).name] == "password"
    assert "POSTGRES_PASSWORD" not in env, "the password is read from the file, not from the environment"


def test_postgres_statefulset_is_hardened_and_keeps_its_data_on_the_claim(docs):
    statefulset = one(docs, "StatefulSet", POSTGRES)
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    (postgres,) = pod["containers"]
    assert spec["replicas"] == 1
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["runAsUser"] >= 10000 and security["fsGroup"] == security["runAsGroup"]
    assert pod["automountServiceAccountToken"] is False
    one(docs, "ServiceAccount", pod["serviceAccountName"])
    sc = postgres["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert postgres["resources"]["requests"]["memory"] == postgres["resources"]["limits"]["memory"]
    assert re.fullmatch(r"[\w./-]+/postgres:\d+(\.\d+)?(-\w+)?", postgres["image"]), "the official image, a version"
    for probe in ("readinessProbe", "livenessProbe"):
        assert postgres[probe]["exec"]["command"][0] == "pg_isready", probe
    # The data directory: a folder of the claim (a fresh disk's root holds lost+found, which initdb refuses).
    env = env_of(postgres)
    (claim,) = spec["volumeClaimTemplates"]
    (data_mount,) = [m for m in postgres["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert Path(env["PGDATA"]).parent == Path(data_mount["mountPath"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and quantity(claim["spec"]["resources"]["requests"]
                                                                           ["storage"]) >= 2 ** 30
    # Everything else it writes (socket and lock, the entrypoint's temporary files) is on emptyDirs.
    for path in ("/var/run/postgresql", "/tmp"):
        volume = mount_for(path, pod, postgres)
        assert volume and "emptyDir" in volume, f"{path} is not on an emptyDir"


def test_network_policies_let_only_the_workers_reach_the_database(docs):
    worker_labels = workers(docs)["spec"]["template"]["metadata"]["labels"]
    db_labels = one(docs, "StatefulSet", POSTGRES)["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", POSTGRES)
    assert service["spec"]["selector"].items() <= db_labels.items()
    assert not service["spec"]["selector"].items() <= worker_labels.items()
    policies = find(docs, "NetworkPolicy")
    (worker_policy,) = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= worker_labels.items()]
    assert worker_policy["spec"]["ingress"] == [], "the workers serve nothing"
    (db_policy,) = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= db_labels.items()]
    (rule,) = db_policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert [p["port"] for p in rule["ports"]] == [5432]


def init_wait_command(docs: list[dict]) -> list[str]:
    (init,) = worker_pod(docs)["initContainers"]
    assert init["command"][:2] == ["python", "-c"]
    return [sys.executable, *init["command"][1:]]


@pytest.fixture
def password_database(postgres_server) -> tuple[str, str]:
    """A database whose user must give a password (scram-sha-256 on 127.0.0.1, as a managed database or the image's
    PostgreSQL asks): (its URL without the password, the password)."""
    import psycopg
    from psycopg import sql

    user, password = "tune_worker", "s3cret-for-the-test"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user),
                                                                            sql.Literal(password)))
        database = postgres_server.create_database().rsplit("/", 1)[1]
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(user)))
        hba = postgres_server.data / "pg_hba.conf"
        rule = f"host all {user} 127.0.0.1/32 scram-sha-256\n"
        if rule not in hba.read_text():
            hba.write_text(rule + hba.read_text())  # the first matching line wins: before the trust lines
            conn.execute("SELECT pg_reload_conf()")
    return postgres_server.database_url(database, user=user), password


@pytest.mark.slow
@pytest.mark.timeout(600)  # a tune worker against a PostgreSQL that wants a password
def test_init_container_and_worker_log_in_with_the_url_and_pgpassword(docs, password_database, tmp_path,
                                                                      monkeypatch):
    """The manifest's way of passing the credentials works against a server that wants a password: the init
    container's script (run as the container runs it) gets in with the password-free URL and PGPASSWORD; Optuna's
    storage, as the workers open it, too; a wrong password is refused, so the password is what let them in."""
    import optuna
    import sqlalchemy

    from job.tune.study import STORAGE_ENV

    url, password = password_database
    assert sqlalchemy.engine.make_url(url).password is None
    env = {**os.environ, STORAGE_ENV: url, "PGPASSWORD": password, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    out = subprocess.run(init_wait_command(docs), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the study database answers" in out.stdout and "waiting" not in out.stdout

    def open_storage(pgpassword: str):
        monkeypatch.setenv("PGPASSWORD", pgpassword)  # libpq reads it when it connects
        storage = optuna.storages.RDBStorage(url)
        storage.engine.dispose()

    open_storage(password)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        open_storage("not-the-password")


# --- kustomize, schemas, checkov -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(K8S)


def ids(docs: list[dict]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def test_kustomization_renders_tune_yaml_into_the_namespace(docs, rendered):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "tune.yaml" in kustomization["resources"], "k8s/kustomization.yaml does not list tune.yaml"
    ours = [d for d in rendered if (d["kind"], d["metadata"]["name"]) in set(ids(docs))]
    assert ids(ours) == ids(docs)
    assert {d["metadata"]["namespace"] for d in ours} == {kustomization["namespace"]}
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in ours} == {"tune", "tune-db"}


def test_bucket_image_and_namespace_reach_the_workers_from_kustomization(docs, tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["namespace"] = "ns-under-test"
    kustomization["images"][0].update(newName="registry.test/team/trainer", newTag="7.7.7")
    (generator,) = kustomization["configMapGenerator"]
    generator["literals"] = [re.sub(r"^bucket=.*", "bucket=bucket-under-test", lit) for lit in generator["literals"]]
    path.write_text(yaml.safe_dump(kustomization))
    rendered = kustomize(tmp_path / "k8s")
    pod = worker_pod(rendered)
    env = env_of(tuner(rendered))
    assert env["STUDY_DIR"] == env_of(tuner(docs))["STUDY_DIR"].replace("YOUR_BUCKET", "bucket-under-test")
    assert env["DATA_DIR"].startswith("gs://bucket-under-test/")
    images = {c["image"] for c in [*pod["containers"], *pod.get("initContainers", [])]}
    assert images == {"registry.test/team/trainer:7.7.7"}
    (postgres,) = one(rendered, "StatefulSet", POSTGRES)["spec"]["template"]["spec"]["containers"]
    assert postgres["image"] == one(docs, "StatefulSet", POSTGRES)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert {d["metadata"]["namespace"] for d in rendered if d["kind"] in ("Job", "StatefulSet", "Secret")} == \
        {"ns-under-test"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_tune_yaml_passes_kubernetes_validate_strict(version, rendered, tmp_path, docs):
    ours = set(ids(docs))
    rendered_file = tmp_path / "rendered-tune.yaml"
    rendered_file.write_text(yaml.safe_dump_all([d for d in rendered if (d["kind"], d["metadata"]["name"]) in ours]))
    out = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, str(TUNE), str(rendered_file)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Couldn't find schema" not in out.stdout + out.stderr, "tune.yaml uses only core kinds"
    # The same check refuses a misspelt field of the worker pod, so a pass above means something.
    broken = yaml.safe_load(yaml.safe_dump(workers(docs)))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.slow
@pytest.mark.timeout(600)  # checkov
def test_checkov_fails_tune_yaml_only_on_listed_skips_that_name_it(tmp_path):
    """checkov over tune.yaml alone: every failed check is in k8s/checkov-skips.yaml, and that skip's reason says why
    it applies to tune.yaml too (tests/integration/test_k8s.py runs checkov over all of k8s/ and keeps the list free of
    stale entries)."""
    shutil.copy(TUNE, tmp_path / TUNE.name)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    out = subprocess.run([checkov_path(), "-d", str(tmp_path), "--framework", "kubernetes", "secrets",
                          "--skip-download", "--quiet", "-o", "json"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.stdout.strip(), f"checkov printed nothing (exit {out.returncode}):\n{out.stderr[-3000:]}"
    reports = json.loads(out.stdout)
    failed: dict[str, set[str]] = {}
    for report in reports if isinstance(reports, list) else [reports]:
        for check in report.get("results", {}).get("failed_checks", []):
            failed.setdefault(check["check_id"], set()).add(check["resource"])
    skips = {s["id"]: s["reason"] for s in yaml.safe_load((K8S / "checkov-skips.yaml").read_text())["skips"]}
    unlisted = {c: sorted(r) for c, r in failed.items() if c not in skips}
    assert not unlisted, f"checkov failures of tune.yaml not in k8s/checkov-skips.yaml: {unlisted}"
    # CKV_K8S_21 (no namespace in the raw files) holds for every manifest alike; the others are particular.
    unexplained = sorted(c for c in failed if c != "CKV_K8S_21" and "tune.yaml" not in skips[c])
    assert not unexplained, f"k8s/checkov-skips.yaml: say in the reason of {unexplained} why tune.yaml needs it"


# --- the podman rehearsal's Pods (tests/rehearsal/rehearse_tune.py; `make rehearse` runs them) ---------------------
def test_rehearsal_pods_are_the_worker_template_with_only_the_listed_changes(docs, tmp_path):
    from job.tune.space import load_space
    from tests.rehearsal.rehearse_tune import BASE_CONFIG, EXTRA_OVERRIDES, WORKERS, tune_docs

    url = "postgresql+psycopg://test@127.0.0.1:5432/tune_rehearsal"
    configmap, *pods = tune_docs(TUNE, image="localhost/cifar-job:test", study_dir="gs://b/cifar/runs/tune-r",
                                 data_dir="gs://b/cifar/data", storage_url=url,
                                 storage_emulator_host="http://127.0.0.1:4443", cpus=2)
    template = workers(docs)["spec"]["template"]
    original = tuner(docs)
    (init_original,) = template["spec"]["initContainers"]
    assert len(pods) == WORKERS == 2
    (space_volume,) = [v for v in template["spec"]["volumes"] if "configMap" in v]
    assert configmap["metadata"]["name"] == space_volume["configMap"]["name"]
    space_file = tmp_path / "space.yaml"
    space_file.write_text(configmap["data"]["space.yaml"])
    space = load_space(str(space_file))
    assert (space.sampler, space.trials, len(space.grid())) == ("grid", 2, 2)

    def strip(items):
        return [{k: v for k, v in item.items() if k != "name"} for item in items]

    for index, pod in enumerate(pods):
        spec = pod["spec"]
        for key in ("restartPolicy", "terminationGracePeriodSeconds", "securityContext", "serviceAccountName",
                    "automountServiceAccountToken"):
            assert spec.get(key) == template["spec"].get(key), key
        assert pod["metadata"]["labels"] == template["metadata"]["labels"]
        assert strip(spec["volumes"]) == strip(template["spec"]["volumes"])
        (container,) = spec["containers"]
        assert container["securityContext"] == original["securityContext"]
        assert strip(container["volumeMounts"]) == strip(original["volumeMounts"])
        env = env_of(container)
        expected = [expand(a, {**env_of(original), "STUDY_DIR": env["STUDY_DIR"], "DATA_DIR": env["DATA_DIR"]})
                    for a in original["args"]]
        expected[expected.index("--config") + 1] = BASE_CONFIG
        assert container["args"] == expected + list(EXTRA_OVERRIDES)
        assert env["JOB_COMPLETION_INDEX"] == str(index) and env["JOB_TUNE_STORAGE"] == url
        for name in CACHE_ENV:
            assert env[name] == env_of(original)[name], name
        (init,) = spec["initContainers"]
        for key in ("command", "securityContext", "resources"):
            assert init.get(key) == init_original.get(key), key
        assert strip(init["volumeMounts"]) == strip(init_original["volumeMounts"])
        assert init["image"] == container["image"] == "localhost/cifar-job:test"
        assert [e["name"] for e in init["env"]] == [e["name"] for e in init_original["env"]]
        assert env_of(init)["JOB_TUNE_STORAGE"] == url


def test_the_cluster_searches_the_readmes_example_space(command):
    """The ConfigMap's space is spaces/cifar10_resnet20_lr_wd.yaml, docs/tuning.md's worked example (one search, two
    places: they must not drift apart)."""
    from job.tune.space import load_space

    example = load_space(str(Path(__file__).resolve().parents[2] / "spaces" / "cifar10_resnet20_lr_wd.yaml"))
    assert load_space(str(command.space_file)) == example
