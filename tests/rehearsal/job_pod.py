"""Turn the Job in k8s/job.yaml into what `podman kube play` can run: its pod template as a Pod, plus its ConfigMap with
a tiny training config. podman runs Pods, not Jobs, and has no GPU, no registry and no cluster DNS here.

Everything the rehearsal is meant to test is copied unchanged from the manifest: command, args, env, volume mounts,
volumes, securityContext (pod and container), restartPolicy, terminationGracePeriodSeconds. Only what cannot work on
this machine is changed, and each change is listed in `CHANGES` so a reader of the rehearsal log sees them.
`rehearsal_pod` makes the changes any workload's pod template needs (`POD_CHANGES`); k8s/serve.yaml's rehearsal
(tests/rehearsal/rehearse_serve.py) uses it for its Deployment's template.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

GPU = "nvidia.com/gpu"
# What rehearsal_pod changes in any pod template (the env it points at the fake bucket is named in each rehearsal's own
# list of changes).
POD_CHANGES = (
    "image -> the locally built one, imagePullPolicy Never (no registry)",
    f"resources: {GPU} and the GPU toleration dropped; cpu capped at this machine's cores",
    "hostNetwork: true (container traffic stays on the host's loopback, where fake-gcs-server listens)",
    "STORAGE_EMULATOR_HOST added (the fake-gcs-server's address)",
    "$(VAR) references in command/args/env expanded here as the kubelet does (podman 4.3 passes them on literally)",
    "volumes renamed <pod>-<name>: podman makes emptyDirs into named volumes, and bare names like 'tmp' could clash",
    "emptyDir medium Memory -> a tmpfs volume made beforehand, root:fsGroup mode 2777 as the kubelet makes it "
    "(podman 4.3 would mount a root-only directory at /dev/shm); sizeLimit is not enforced",
)
CHANGES = (
    "Job -> Pod: its spec.template as the Pod spec (podman kube play runs Pods, not Jobs)",
    *POD_CHANGES,
    "env RUN_DIR/DATA_DIR -> the fake bucket",
    "ConfigMap train.yaml -> the manifest's recipe with a tiny model, dataset and step count",
)
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise ValueError(f"expected one {kind}{' ' + name if name else ''} in the manifest, found {len(found)}")
    return found[0]


def trainer_container(pod_spec: dict[str, Any], name: str = "trainer") -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def tiny_train_yaml(manifest_yaml: str, overrides: dict[str, Any]) -> str:
    """The manifest's training YAML with the keys of `overrides` set section by section (a scalar such as `preset`
    is replaced); everything else the manifest sets (optimizer, run.progress, the SIGTERM upload budget) stays as the
    cluster would run it."""
    tree = yaml.safe_load(manifest_yaml)
    for section, values in overrides.items():
        tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
    return yaml.safe_dump(tree, sort_keys=False)


def expand_kube_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, `$$` is a literal `$`, anything else stays."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


def dump(docs: list[dict[str, Any]]) -> str:
    """YAML for podman, with multi-line strings (the training config) as readable literal blocks."""
    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, string)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)


def rehearsal_docs(job_yaml: Path, *, pod_name: str, image: str, run_dir: str, data_dir: str,
                   storage_emulator_host: str, train_overrides: dict[str, Any],
                   cpus: int | None = None) -> list[dict[str, Any]]:
    """[ConfigMap, Pod] for `podman kube play`, derived from the Job (and its ConfigMap) in `job_yaml`."""
    docs = load_docs(job_yaml)
    job = find(docs, "Job")
    template = job["spec"]["template"]
    config_volumes = [v for v in template["spec"].get("volumes", []) if "configMap" in v]
    if len(config_volumes) != 1:
        raise ValueError(f"expected one configMap volume in the Job's pod template, found {len(config_volumes)}")
    configmap = copy.deepcopy(find(docs, "ConfigMap", config_volumes[0]["configMap"]["name"]))
    (key, recipe), = configmap["data"].items()
    configmap["data"][key] = tiny_train_yaml(recipe, train_overrides)
    pod = rehearsal_pod(template, pod_name=pod_name, image=image, container_name="trainer",
                        env_values={"RUN_DIR": run_dir, "DATA_DIR": data_dir},
                        storage_emulator_host=storage_emulator_host, cpus=cpus)
    return [configmap, pod]


def rehearsal_pod(template: dict[str, Any], *, pod_name: str, image: str, container_name: str,
                  env_values: dict[str, str], storage_emulator_host: str, cpus: int | None = None) -> dict[str, Any]:
    """A workload's pod template (a Job's or a Deployment's; not changed) as a Pod for `podman kube play`, with the
    changes of POD_CHANGES made, and the env variables in `env_values` (which the container must define) set to those
    values."""
    template = copy.deepcopy(template)
    spec = template["spec"]
    container = trainer_container(spec, container_name)

    container["image"] = image
    container["imagePullPolicy"] = "Never"
    cpus = cpus or os.cpu_count() or 1
    for kind in ("requests", "limits"):
        amounts = container.get("resources", {}).get(kind)
        if amounts is None:
            continue
        amounts.pop(GPU, None)
        if "cpu" in amounts and _cpu_cores(amounts["cpu"]) > cpus:  # podman refuses more CPUs than the host has
            amounts["cpu"] = str(cpus)
    spec["tolerations"] = [t for t in spec.get("tolerations", []) if t.get("key") != GPU]
    if not spec["tolerations"]:
        del spec["tolerations"]
    spec["hostNetwork"] = True

    replacements = dict(env_values)
    env = container.setdefault("env", [])
    for item in env:
        if item["name"] in replacements:
            item["value"] = replacements.pop(item["name"])
    if replacements:
        raise ValueError(f"the {container_name} container has no env {', '.join(replacements)}: the rehearsal cannot "
                         "redirect it to the fake bucket")
    env.append({"name": "STORAGE_EMULATOR_HOST", "value": storage_emulator_host})
    defined: dict[str, str] = {}
    for item in env:  # an env value may refer to the variables above it
        if "value" in item:
            item["value"] = defined[item["name"]] = expand_kube_vars(item["value"], defined)
    for key in ("command", "args"):
        if key in container:
            container[key] = [expand_kube_vars(word, defined) for word in container[key]]

    for volume in spec.get("volumes", []):
        renamed = f"{pod_name}-{volume['name']}"
        for c in spec["containers"] + spec.get("initContainers", []):
            for mount in c.get("volumeMounts", []):
                if mount["name"] == volume["name"]:
                    mount["name"] = renamed
        volume["name"] = renamed

    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "labels": template.get("metadata", {}).get("labels", {})},
            "spec": spec}


def memory_volumes(pod: dict[str, Any]) -> dict[str, str]:
    """Volume name -> tmpfs mount options for the Pod's `emptyDir: {medium: Memory}` volumes: what the kubelet
    mounts there (owner root, group fsGroup with setgid, everyone may write)."""
    fs_group = pod["spec"].get("securityContext", {}).get("fsGroup")
    options = f"uid=0,gid={fs_group},mode=2777" if fs_group is not None else "mode=0777"
    return {v["name"]: options for v in pod["spec"].get("volumes", [])
            if (v.get("emptyDir") or {}).get("medium") == "Memory"}


def _cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
