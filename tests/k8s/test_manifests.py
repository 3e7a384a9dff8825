"""k8s/: every overlay builds with kustomize and validates offline, the RayServices embed their
serving files exactly, and the pods are non-root with resource limits and secrets from Secrets.
The KubeRay CRDs come from KILN_KUBERAY_CRDS (`make test` sets it when ../shared/kuberay-crds
exists); without them the strict CRD check is skipped, and says so."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from kiln.k8s.render import SOURCE_ANNOTATION
from kiln.k8s.validate import build, check_documents, load_crds
from tests.conftest import ROOT, run_kiln

OVERLAYS = sorted(p for p in (ROOT / "k8s" / "overlays").iterdir() if p.is_dir())
CRDS = os.environ.get("KILN_KUBERAY_CRDS")

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None and shutil.which("kustomize") is None,
    reason="kubectl (or kustomize) is not on PATH: apt-get install kubernetes-client",
)


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {overlay.name: build(overlay) for overlay in OVERLAYS}


def resources(built, kind: str) -> list[dict]:
    return [doc for docs in built.values() for doc in docs if doc["kind"] == kind]


def test_every_overlay_builds(built):
    assert set(built) == {"cluster", "train", "tune", "serve"}
    kinds = {name: sorted({d["kind"] for d in docs}) for name, docs in built.items()}
    assert "RayCluster" in kinds["cluster"] and "RayService" in kinds["serve"]
    assert "RayJob" in kinds["train"] and "RayJob" in kinds["tune"]
    assert {"StatefulSet", "Service", "Secret", "NetworkPolicy"} <= set(kinds["serve"])
    for docs in built.values():
        assert all(d["metadata"].get("namespace") == "kiln" for d in docs)


def test_core_resources_validate_against_kubernetes_schemas(built):
    for name, docs in built.items():
        report = check_documents(docs, crds=None, source=name)
        assert report.problems == []
        core = {c.split(": ")[1].split()[0] for c in report.checked}
        assert core >= {"Secret", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap"}


@pytest.mark.skipif(not CRDS, reason="KILN_KUBERAY_CRDS is not set (no ../shared/kuberay-crds)")
def test_ray_resources_validate_strictly_against_the_kuberay_crds():
    done = run_kiln("k8s", "validate", "--crds", CRDS, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    ray = [c for c in report["checked"] if re.search(r": Ray(Cluster|Job|Service) ", c)]
    assert len(ray) == 5, report  # 1 RayCluster, 2 RayJobs, 2 RayServices
    assert sorted(report["skipped"]) == [
        f"k8s/overlays/{o}: {kind}"
        for o in sorted(["cluster", "serve", "train", "tune"])
        for kind in ("PodMonitor kiln-ray", "PrometheusRule kiln-serving")
    ]


@pytest.mark.skipif(not CRDS, reason="KILN_KUBERAY_CRDS is not set (no ../shared/kuberay-crds)")
def test_strict_validation_names_an_unknown_field(built, tmp_path):
    [cluster] = resources(built, "RayCluster")
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # a typo the API server would drop
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 1
    report = check_documents([cluster], load_crds(Path(CRDS)))
    assert any("('maxReplica' was unexpected)" in p for p in report.problems), report.problems
    assert any("imagePullPolicy: 1 is not of type 'string'" in p for p in report.problems)


def test_alert_rules_watch_exported_metrics_at_the_documented_thresholds(built):
    from kiln.serve.replica import metrics
    from kiln.serve.replica.drift import INPUTS, OUTPUT, SHIFTED

    rules = [r for doc in resources(built, "PrometheusRule") for g in doc["spec"]["groups"]
             for r in g["rules"]]  # fmt: skip
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    for feature in (INPUTS, OUTPUT):
        selector, threshold = f'feature="{feature}"', f"> {SHIFTED}"
        assert any(selector in e and e.endswith(threshold) for e in exprs.values()), feature
    exported = Path(metrics.__file__).read_text()
    for name in {n for e in exprs.values() for n in re.findall(r"\bray_(kiln_[a-z_]+)", e)}:
        assert f'"{re.sub(r"_(total|bucket)$", "", name)}"' in exported, name


def test_serve_config_v2_is_the_serving_file(built):
    from ray.serve.schema import ServeDeploySchema

    services = resources(built, "RayService")
    assert {s["metadata"]["name"] for s in services} == {"kiln-digits", "kiln-recsys"}
    for service in services:
        source = ROOT / service["metadata"]["annotations"][SOURCE_ANNOTATION]
        embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
        assert embedded == yaml.safe_load(source.read_text())
        ServeDeploySchema.model_validate(embedded)
    assert run_kiln("k8s", "render", "--check").returncode == 0  # the patches are not stale


def test_ray_version_is_the_pinned_one(built):
    pinned = re.search(r"^ray==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M)[1]
    versions = [c["spec"]["rayVersion"] for c in resources(built, "RayCluster")]
    versions += [j["spec"]["rayClusterSpec"]["rayVersion"] for j in resources(built, "RayJob")]
    versions += [
        s["spec"]["rayClusterConfig"]["rayVersion"] for s in resources(built, "RayService")
    ]
    assert versions == [pinned] * 5
    assert f"ARG RAY_VERSION={pinned}" in (ROOT / "k8s" / "Dockerfile").read_text()
    report = check_documents(resources(built, "RayCluster"), crds=None)
    assert report.problems == [] and report.skipped  # no CRDs here: only Kiln's rules ran


def pod_templates(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "StatefulSet":
        return [spec["template"]]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"] for g in groups]


def test_pods_run_as_non_root_with_limits_and_secrets_from_secrets(built):
    kinds = ("RayCluster", "RayJob", "RayService", "StatefulSet")
    docs = [d for kind in kinds for d in resources(built, kind)]
    for doc in docs:
        for template in pod_templates(doc):
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True, doc["metadata"]
            for container in template["spec"]["containers"]:
                limits = container["resources"]["limits"]
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and limits
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                for env in container.get("env", []):
                    secret = re.search(r"PASSWORD|KEYS|TOKEN", env["name"])
                    assert not secret or "valueFrom" in env, env  # never a literal


def test_gpu_workers_request_gpus_and_tolerate_their_taint(built):
    [cluster] = resources(built, "RayCluster")
    [gpu] = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    [train] = [j for j in resources(built, "RayJob") if j["metadata"]["name"] == "digits-cnn"]
    assert "--run-name digits-cnn-k8s" in train["spec"]["entrypoint"]  # retries resume
    assert train["spec"]["backoffLimit"] >= 1


def test_redis_is_reachable_only_from_ray_pods(built):
    policies = {p["metadata"]["name"]: p["spec"] for p in resources(built, "NetworkPolicy")}
    redis = policies["kiln-redis-from-ray"]
    assert redis["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kiln-redis"}
    assert redis["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}],
            "ports": [{"protocol": "TCP", "port": 6379}],
        }
    ]
    public = policies["kiln-serve-from-anywhere"]["ingress"]
    serve_ports = [{"protocol": "TCP", "port": port} for port in (8000, 9000, 8001)]
    assert public == [{"ports": serve_ports}]  # only Serve's HTTP and gRPC ports, the gateway
