"""The rehearsal's Pod is k8s/job.yaml's pod template with only the listed changes (tests/rehearsal/job_pod.py).

Fast and container-free: what podman then does with the Pod is `make rehearse`'s job.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from job.config import load_config
from tests.rehearsal.job_pod import GPU, dump, expand_kube_vars, find, load_docs, memory_volumes, rehearsal_docs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

JOB_YAML = Path(__file__).resolve().parents[2] / "k8s" / "job.yaml"
TINY = {"preset": "rehearsal", "data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {"epochs": 2}}
RUN_DIR = "gs://bucket/cifar/runs/rehearsal"
EMULATOR = "http://127.0.0.1:4443"


@pytest.fixture(scope="module")
def manifest():
    docs = load_docs(JOB_YAML)
    return find(docs, "ConfigMap"), find(docs, "Job")["spec"]["template"]


@pytest.fixture(scope="module")
def derived():
    configmap, pod = rehearsal_docs(JOB_YAML, pod_name="rh", image="localhost/cifar-job:test", run_dir=RUN_DIR,
                                    data_dir="gs://bucket/data", storage_emulator_host=EMULATOR,
                                    train_overrides=TINY, cpus=2)
    return configmap, pod


def trainer(spec):
    return next(c for c in spec["containers"] if c["name"] == "trainer")


def test_the_pod_keeps_what_the_rehearsal_tests(manifest, derived):
    _, template = manifest
    _, pod = derived
    original, rehearsed = trainer(template["spec"]), trainer(pod["spec"])
    for key in ("restartPolicy", "terminationGracePeriodSeconds", "securityContext", "serviceAccountName",
                "automountServiceAccountToken"):
        assert pod["spec"].get(key) == template["spec"].get(key), key
    for key in ("command", "securityContext"):
        assert rehearsed.get(key) == original.get(key), key
    assert [m["mountPath"] for m in rehearsed["volumeMounts"]] == [m["mountPath"] for m in original["volumeMounts"]]
    assert [{k: v for k, v in m.items() if k != "name"} for m in rehearsed["volumeMounts"]] == \
        [{k: v for k, v in m.items() if k != "name"} for m in original["volumeMounts"]]
    strip = lambda volumes: [{k: v for k, v in vol.items() if k != "name"} for vol in volumes]  # noqa: E731
    assert strip(pod["spec"]["volumes"]) == strip(template["spec"]["volumes"])
    assert pod["metadata"]["labels"] == template["metadata"]["labels"]
    kept_env = {e["name"]: e for e in original["env"] if e["name"] not in ("RUN_DIR", "DATA_DIR")}
    assert {e["name"]: e for e in rehearsed["env"] if e["name"] in kept_env} == kept_env


def test_only_the_listed_changes_are_made(derived):
    _, pod = derived
    spec, container = pod["spec"], trainer(pod["spec"])
    assert pod["kind"] == "Pod" and spec["hostNetwork"] is True
    assert container["image"] == "localhost/cifar-job:test" and container["imagePullPolicy"] == "Never"
    for amounts in container.get("resources", {}).values():
        assert GPU not in amounts and float(amounts.get("cpu", 0)) <= 2
    assert not [t for t in spec.get("tolerations", []) if t.get("key") == GPU]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RUN_DIR"] == RUN_DIR and env["STORAGE_EMULATOR_HOST"] == EMULATOR
    assert all(v["name"].startswith("rh-") for v in spec["volumes"])
    assert {m["name"] for m in container["volumeMounts"]} <= {v["name"] for v in spec["volumes"]}


def test_args_are_expanded_as_the_kubelet_would(derived):
    _, pod = derived
    args = trainer(pod["spec"])["args"]
    assert f"run.dir={RUN_DIR}" in args and "data.dir=gs://bucket/data" in args
    assert not [a for a in args if "$(" in a]
    assert expand_kube_vars("$(A)-$$(A)-$(B)", {"A": "x"}) == "x-$(A)-$(B)"


def test_the_config_map_is_the_manifests_recipe_made_tiny_and_loads(manifest, derived, tmp_path):
    original_map, template = manifest
    configmap, pod = derived
    (config_volume,) = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    assert configmap["metadata"]["name"] == config_volume["configMap"]["name"] == original_map["metadata"]["name"]
    (key, text), = configmap["data"].items()
    (original_text,) = original_map["data"].values()
    path = tmp_path / key
    path.write_text(text)
    args = trainer(pod["spec"])["args"]
    cfg = load_config(str(path), [a for a in args if "=" in a and not a.startswith("-")])
    original = yaml.safe_load(original_text)
    assert (cfg.data.name, cfg.model.name, cfg.train.epochs) == ("digits", "mlp", 2)
    assert cfg.checkpoint.upload_timeout_seconds == original["checkpoint"]["upload_timeout_seconds"]
    assert cfg.run.progress == original["run"]["progress"] and cfg.run_dir == RUN_DIR


def test_memory_emptydirs_become_tmpfs_like_the_kubelets(derived):
    _, pod = derived
    fs_group = pod["spec"]["securityContext"]["fsGroup"]
    assert memory_volumes(pod) == {"rh-dshm": f"uid=0,gid={fs_group},mode=2777"}
    no_group = copy.deepcopy(pod)
    del no_group["spec"]["securityContext"]["fsGroup"]
    assert set(memory_volumes(no_group).values()) == {"mode=0777"}


def test_dump_round_trips(derived):
    assert list(yaml.safe_load_all(dump(list(derived)))) == list(derived)


def test_the_mpi_rehearsal_runs_the_launchers_command_from_the_manifest():
    """tests/rehearsal/rehearse_mpi.py: the MPIJob launcher's words, with -np and two local-launch options changed."""
    from job.cli import build_parser
    from tests.rehearsal.rehearse_mpi import RANKS, launcher_command

    mpijob_yaml = JOB_YAML.parent / "horovod-mpijob.yaml"
    words, env, worker_spec = launcher_command(mpijob_yaml, RUN_DIR, "gs://bucket/data")
    launcher = find(load_docs(mpijob_yaml), "MPIJob")["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    original = launcher["containers"][0]["command"] + launcher["containers"][0]["args"]
    added = ["--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
    mpirun = words.index("mpirun")
    assert words[mpirun + 1:mpirun + 1 + len(added)] == added
    unchanged = words[:mpirun + 1] + words[mpirun + 1 + len(added):]
    np_at = unchanged.index("-np")
    assert unchanged[np_at + 1] == str(RANKS)
    expected = [expand_kube_vars(w, env) for w in original]
    expected[np_at + 1] = str(RANKS)
    assert unchanged == expected  # everything else is the manifest's, $(RUN_DIR) expanded to the fake bucket
    args = build_parser().parse_args(words[words.index("job", words.index("python", mpirun)) + 1:])
    assert args.command == "train" and f"run.dir={RUN_DIR}" in args.overrides
    assert worker_spec["securityContext"]["runAsNonRoot"]
