"""k8s/kserve/ (docs/serving.md): two InferenceServices, rendered by `kubectl kustomize`, every field checked against
the InferenceService CRD's OpenAPI schema (vendored from KServe v0.20.0: tests/fixtures/kserve/, made by
tests/tools/vendor_kserve_schema.py) with unknown fields refused; the custom predictor's pod hardened like every pod
in k8s/ and serving the training Job's run over v2; the TF Serving one on the run's export/tfserving/<model> with its
release pinned. Also the serving Deployment's optional autoscaling on requests per second (k8s/components/)."""
from __future__ import annotations

import copy
import gzip
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

import tests.integration.test_k8s as k8s
from tests.integration.test_k8s import K8S, env_of, kustomize, one, pod_templates, serve_args, serve_parts

KSERVE = K8S / "kserve"
SCHEMA = Path(__file__).resolve().parents[1] / "fixtures" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
V2_PROBES = {"startupProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready",
             "livenessProbe": "/v2/health/live"}
TF_SERVING_RELEASE = "2.20.0"  # the newest TF Serving (tensorflow/serving#4129); none is built on TF 2.21


def strict(node):
    """The CRD's schema as the API server's strict field validation reads it: an object schema that lists its
    properties refuses any other (unless it preserves unknown fields), where jsonschema would allow them."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value) for key, value in node.items()}
    if "properties" in node and "additionalProperties" not in node and \
            not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    return node


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(gzip.decompress(SCHEMA.read_bytes()))
    assert schema["$comment"].startswith("KServe v0.20.0 (commit ")
    return jsonschema.Draft7Validator(strict(schema))


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(KSERVE)


@pytest.fixture(scope="module")
def services(rendered) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered if d["kind"] == "InferenceService"}


def errors(validator, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_kustomize_renders_both_inference_services_into_the_namespace(rendered, services):
    kustomization = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    assert sorted(services) == ["cifar-classifier", "cifar-tfserving"]
    assert sorted(d["kind"] for d in rendered) == ["InferenceService", "InferenceService", "ServiceAccount"]
    for doc in rendered:
        assert doc["metadata"]["namespace"] == kustomization["namespace"]
    for service in services.values():
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        assert service["spec"]["predictor"]["serviceAccountName"] == one(rendered, "ServiceAccount")["metadata"]["name"]


def test_every_field_is_one_the_crd_knows(validator, services):
    for name, service in services.items():
        assert errors(validator, service) == [], name


@pytest.mark.parametrize("where, field", [
    (("spec", "predictor"), "minReplica"),  # a typo the API server would prune without strict validation
    (("spec", "predictor", "containers", 0), "readinesProbe"),
    (("spec", "predictor", "containers", 0, "securityContext"), "readOnlyRootFileSystem"),
])
def test_an_unknown_field_is_refused(validator, services, where, field):
    broken = copy.deepcopy(services["cifar-classifier"])
    node = broken
    for key in where:
        node = node[key]
    node[field] = 1
    assert any(f"'{field}' was unexpected" in e for e in errors(validator, broken))


def test_the_custom_predictor_serves_the_training_jobs_run_over_v2(services):
    from job.serve import TOKEN_ENV

    service = services["cifar-classifier"]
    predictor = service["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the name KServe gives its predictor container
    args = serve_args(container)
    job = one(kustomize(K8S), "Job", "cifar-train")
    trainer = next(c for c in next(pod_templates(job))[1]["spec"]["containers"] if c["name"] == "trainer")
    assert args.run_dir == env_of(trainer)["RUN_DIR"] and args.model is None
    assert args.host == "0.0.0.0" and [p["containerPort"] for p in container["ports"]] == [args.port]
    for kind, path in V2_PROBES.items():
        assert container[kind]["httpGet"] == {"path": path, "port": args.port}, kind
    assert env_of(container)["JOB_SERVE_MODEL_NAME"] == service["metadata"]["name"]  # /v2/models/<the isvc's name>
    token = next(e for e in container["env"] if e["name"] == TOKEN_ENV)
    assert "value" not in token and token["valueFrom"]["secretKeyRef"].get("optional", False) is False
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"] and predictor["scaleMetric"] == "cpu"


def test_the_custom_predictors_pod_is_hardened_like_the_serving_deployment(services):
    predictor = services["cifar-classifier"]["spec"]["predictor"]
    uid, gid, home = k8s.image_user()
    k8s.assert_pod_hardened("InferenceService/cifar-classifier", predictor, uid, gid, home)
    _, template, serve_container = serve_parts(kustomize(K8S))
    (container,) = predictor["containers"]
    assert predictor["securityContext"] == template["spec"]["securityContext"]
    assert container["securityContext"] == serve_container["securityContext"]
    assert container["resources"] == serve_container["resources"]
    assert container["image"] == serve_container["image"]


def test_the_tf_serving_service_reads_the_runs_tfserving_folder_with_its_release_pinned(services, tmp_path):
    from job.config import load_config
    from job.export import tfserving_dir

    model = services["cifar-tfserving"]["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-tensorflow-serving" and model["modelFormat"]["name"] == "tensorflow"
    assert model["runtimeVersion"] == TF_SERVING_RELEASE and model["protocolVersion"] == "v1"
    job = one(kustomize(K8S), "Job", "cifar-train")
    trainer = next(c for c in next(pod_templates(job))[1]["spec"]["containers"] if c["name"] == "trainer")
    run_dir = env_of(trainer)["RUN_DIR"]
    config = one(kustomize(K8S), "ConfigMap", "cifar-train-config")["data"]
    (name, text), = config.items()
    (tmp_path / name).write_text(text)
    cfg = load_config(str(tmp_path / name))
    # TF Serving's --model_base_path is the folder above the numeric versions (job/export.py writes version 1)
    assert model["storageUri"] == f"{run_dir}/{tfserving_dir(cfg).rsplit('/', 1)[0]}"


def test_bucket_namespace_image_and_account_are_set_in_one_place(tmp_path):
    shutil.copytree(KSERVE, tmp_path / "kserve")
    path = tmp_path / "kserve" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["namespace"] = "ns-under-test"
    kustomization["images"][0].update(newName="registry.test/team/trainer", newTag="7.7.7")
    (generator,) = kustomization["configMapGenerator"]
    generator["literals"] = ["bucket=bucket-under-test", "service-account=sa@test.iam.gserviceaccount.com"]
    path.write_text(yaml.safe_dump(kustomization))
    docs = kustomize(tmp_path / "kserve")
    text = yaml.safe_dump_all(docs)
    assert "YOUR_BUCKET" not in text and "your-project" not in text
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    (container,) = services["cifar-classifier"]["spec"]["predictor"]["containers"]
    assert env_of(container)["RUN_DIR"].startswith("gs://bucket-under-test/")
    assert container["image"] == "registry.test/team/trainer:7.7.7"
    assert services["cifar-tfserving"]["spec"]["predictor"]["model"]["storageUri"].startswith("gs://bucket-under-test/")
    account = one(docs, "ServiceAccount", "cifar-kserve")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == "sa@test.iam.gserviceaccount.com"
    assert {d["metadata"]["namespace"] for d in docs} == {"ns-under-test"}


def test_the_rps_component_adds_a_pods_metric_to_the_serving_autoscaler(tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["components"] = ["components/serve-rps"]
    path.write_text(yaml.safe_dump(kustomization))
    plain = one(kustomize(K8S), "HorizontalPodAutoscaler", "cifar-serve")["spec"]["metrics"]
    metrics = one(kustomize(tmp_path / "k8s"), "HorizontalPodAutoscaler", "cifar-serve")["spec"]["metrics"]
    assert [m["type"] for m in plain] == ["Resource"]
    assert metrics[:1] == plain and [m["type"] for m in metrics] == ["Resource", "Pods"]
    pods = metrics[1]["pods"]
    assert pods["metric"]["name"] == "job_serve_requests_per_second" and pods["target"]["type"] == "AverageValue"
