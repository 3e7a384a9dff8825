"""Checks what kustomize builds, offline, the way the API server would:
- RayCluster, RayJob and RayService against the KubeRay CRDs' `openAPIV3Schema`, strictly
  (an unknown field is an error, as kubeconform treats CRDs), from CRD files the user gives:
  a KubeRay release's, or their own cluster's (`kubectl get crd rayclusters.ray.io -o yaml`);
- core resources (Deployment, StatefulSet, Service, NetworkPolicy, Secret, ...) against the
  Kubernetes schemas of `kubernetes-validate`;
- Kiln's own rules: `rayVersion` is Kiln's Ray, and `serveConfigV2` is a Ray Serve config.

    problems = check_documents(build(Path("k8s/overlays/serve")), load_crds(Path("crds")))
"""

import copy
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kiln.errors import SpecError

CORE_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "networking.k8s.io/v1",
    "policy/v1",
    "rbac.authorization.k8s.io/v1",
    "autoscaling/v2",
}
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # kinds with no schema here (PodMonitor)
    problems: list[str] = field(default_factory=list)


def build(path: Path) -> list[dict[str, Any]]:
    """The documents of a kustomization directory (built by `kubectl kustomize`, or
    `kustomize build`), or of a YAML file."""
    if path.is_dir():
        text = _kustomize(path)
        source = str(path)
    else:
        text, source = path.read_text(), str(path)
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not YAML: {e}") from None


def _kustomize(path: Path) -> str:
    if kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize", str(path)]
    elif kustomize := shutil.which("kustomize"):
        command = [kustomize, "build", str(path)]
    else:
        raise SpecError(
            "neither kubectl nor kustomize is on PATH (apt-get install kubernetes-client)"
        )
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "Warning" not in ln]
        raise SpecError(f"{path}: kustomize failed: {(lines or ['?'])[-1]}")
    return done.stdout


def load_crds(folder: Path) -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) → a strict Draft 7 validator, from every CRD file in `folder`."""
    from jsonschema import Draft7Validator

    validators = {}
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    for crd in (doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"type": "object"}
            validators[(f"{group}/{version['name']}", kind)] = Draft7Validator(schema)
    if not validators:
        raise SpecError(f"{folder}: no CustomResourceDefinition found")
    return validators


def closed(schema: Any) -> Any:
    """Objects that list their properties accept no others, unless the schema keeps unknown
    fields (x-kubernetes-preserve-unknown-fields): the API server prunes them silently, and a
    typo would be lost without a word."""
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            closed(value)
    elif isinstance(schema, list):
        for item in schema:
            closed(item)
    return schema


def check_documents(
    docs: Iterable[dict[str, Any]],
    crds: dict[tuple[str, str], Any] | None,
    kubernetes_version: str = "1.33",
    source: str = "",
) -> Report:
    report = Report()
    for doc in docs:
        name = f"{source}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if api in CORE_GROUPS:
            report.problems += _core(doc, kubernetes_version, name)
        elif crds is not None and (api, kind) in crds:
            report.problems += [f"{name}: {e}" for e in _crd_errors(crds[(api, kind)], doc)]
        else:
            report.skipped.append(name)
            continue
        if kind in RAY_KINDS:
            report.problems += [f"{name}: {e}" for e in kiln_rules(doc)]
        report.checked.append(name)
    return report


def _core(doc: dict[str, Any], version: str, name: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {_path(e.path)}: {e.message}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        return [f"{name}: no Kubernetes {version} schema: {e}"]
    return []


def _crd_errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def kiln_rules(doc: dict[str, Any]) -> list[str]:
    """What the schemas cannot know: the Ray version, and the embedded Serve config."""
    import ray
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    problems = []
    if (version := cluster.get("rayVersion")) != ray.__version__:
        problems.append(f"rayVersion {version!r} is not Kiln's Ray {ray.__version__} (the image's)")
    if doc.get("kind") == "RayService":
        try:
            ServeDeploySchema.model_validate(yaml.safe_load(spec.get("serveConfigV2") or ""))
        except (ValidationError, yaml.YAMLError) as e:
            first = str(e).splitlines()[:3]
            problems.append(f"serveConfigV2 is not a Ray Serve config: {' '.join(first)}")
    return problems


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top)"
