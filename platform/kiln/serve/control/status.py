"""What `kiln serve status` adds to Serve's view of its deployments: requests per second,
latency percentiles, queued and ongoing requests, and the model version, from the metrics
the nodes export (Ray Serve's own, and Kiln's version gauge).

    targets = metrics_targets([])  # the local cluster's nodes, found as Prometheus finds them
    stats = deployment_stats(targets, window_s=2)  # {(application, deployment): stats}
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from kiln.errors import ServeError

Key = tuple[str, str]  # (application, deployment)
REQUESTS = "ray_serve_deployment_request_counter_total"
LATENCY = "ray_serve_deployment_processing_latency_ms_bucket"
QUEUED = "ray_serve_deployment_queued_queries"
ONGOING = "ray_serve_replica_processing_queries"
VERSION = "ray_kiln_model_version"
ANSWERED = "ray_kiln_requests_total"


@dataclass
class DeploymentStats:
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    queued: float = 0.0
    ongoing: float = 0.0
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def metrics_targets(given: list[str]) -> list[str]:
    """The given /metrics URLs, else every node of the local cluster, read from the file Ray
    writes for Prometheus' file-based service discovery."""
    if given:
        return given
    from ray._common.utils import get_default_ray_temp_dir

    path = Path(get_default_ray_temp_dir()) / "prom_metrics_service_discovery.json"
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ServeError(
            f"no metrics endpoints: {path} is missing (a remote cluster? pass --metrics URL)"
        ) from None
    return [f"http://{target}/metrics" for group in groups for target in group["targets"]]


def scrape(targets: list[str]) -> list[Any]:
    """The samples of every target that answers; none answering is an error, not an empty
    cluster (Ray's discovery file outlives the cluster that wrote it)."""
    samples, answered = [], 0
    for url in targets:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            continue  # a node that went away, or a port that exports nothing
        answered += 1
        samples += [s for family in text_string_to_metric_families(text) for s in family.samples]
    if not answered:
        raise ServeError(
            f"no metrics endpoint answers ({', '.join(targets) or 'none known'}): is the cluster "
            "up? (a remote one: pass --metrics URL)"
        )
    return samples


def deployment_stats(targets: list[str], window_s: float = 2.0) -> dict[Key, DeploymentStats]:
    """Two scrapes `window_s` apart: rates and percentiles over that window, gauges now."""
    before = scrape(targets)
    time.sleep(window_s)
    after = scrape(targets)
    stats: dict[Key, DeploymentStats] = {}

    def of(sample: Any) -> DeploymentStats:
        key = (sample.labels.get("application", ""), sample.labels.get("deployment", ""))
        return stats.setdefault(key, DeploymentStats())

    for key, count in _delta(before, after, REQUESTS, ()).items():
        stats.setdefault(key, DeploymentStats()).rps = count / window_s
    for key, buckets in _buckets(before, after).items():
        stats.setdefault(key, DeploymentStats()).p50_ms = quantile(buckets, 0.5)
        stats[key].p99_ms = quantile(buckets, 0.99)
    for sample in after:
        if sample.name == QUEUED:
            of(sample).queued += sample.value
        elif sample.name == ONGOING:
            of(sample).ongoing += sample.value
    versions = served_versions(before, after)
    for (application, _), entry in stats.items():
        entry.version = versions.get(application)
    return stats


def served_versions(before: list[Any], after: list[Any]) -> dict[str, int]:
    """Per model, the version answering unversioned calls: Kiln's gauge, set at load. Ray's
    metrics agent drops a gauge sample that was not exported again within two report intervals,
    which a busy node misses; then the first scrape's gauge stands in, and failing that the
    version that answered most of the window's requests."""
    answered: dict[tuple[str, str], float] = {}
    for sign, samples in ((-1, before), (1, after)):
        for s in samples:
            if s.name == ANSWERED and s.labels.get("version"):
                key = (s.labels.get("model", ""), s.labels["version"])
                answered[key] = answered.get(key, 0.0) + sign * s.value
    versions = {
        model: int(version)
        for (model, version), count in sorted(answered.items(), key=lambda kv: kv[1])
        if count > 0
    }
    for samples in (before, after):
        versions.update({s.labels.get("model"): int(s.value) for s in samples if s.name == VERSION})
    return versions


def _delta(before: list[Any], after: list[Any], name: str, extra: tuple[str, ...]) -> dict:
    """Per (application, deployment, *extra labels): after minus before, summed over replicas."""
    totals: dict[Any, float] = {}
    for sign, samples in ((-1, before), (1, after)):
        for s in samples:
            if s.name == name:
                key = (s.labels.get("application", ""), s.labels.get("deployment", ""))
                key += tuple(s.labels.get(label, "") for label in extra)
                totals[key] = totals.get(key, 0.0) + sign * s.value
    return totals


def _buckets(before: list[Any], after: list[Any]) -> dict[Key, list[tuple[float, float]]]:
    """(upper bound, cumulative count) per deployment, counted within the window."""
    by_key: dict[Key, dict[float, float]] = {}
    for (application, deployment, le), count in _delta(before, after, LATENCY, ("le",)).items():
        by_key.setdefault((application, deployment), {})[float(le)] = count
    return {key: sorted(counts.items()) for key, counts in by_key.items()}


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    bounds = np.array([b for b, _ in buckets])
    counts = np.array([c for _, c in buckets])
    i = int(np.searchsorted(counts, rank))
    if bounds[i] == float("inf"):
        return float(bounds[i - 1]) if i else None
    lower, below = (float(bounds[i - 1]), float(counts[i - 1])) if i else (0.0, 0.0)
    inside = float(counts[i]) - below
    return lower + (float(bounds[i]) - lower) * ((rank - below) / inside if inside else 1.0)
