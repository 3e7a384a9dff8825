"""Checks made before a job is submitted, against the cluster's own view of itself, for what
would otherwise fail minutes later on the cluster, or wait forever for resources it lacks.

    check_storage({"registry": "/home/me/.kiln/registry"}, nodes, shared=False)  # 2+ hosts: no
    check_resources(spec, nodes, address)                                      # no GPU: refused
"""

from typing import Any

from kiln.errors import PreflightError
from kiln.spec import JobSpec

Resources = dict[str, float]


def worker_resources(spec: JobSpec) -> Resources:
    """What each training worker asks for, as Ray's ScalingConfig computes it."""
    scaling = spec.scaling
    if scaling.resources_per_worker is None:
        wanted: Resources = {"GPU": 1} if scaling.use_gpu else {"CPU": 1}
    else:
        wanted = {k: v for k, v in scaling.resources_per_worker.items() if v != 0}
    if scaling.use_gpu:
        wanted.setdefault("GPU", 1)
    return wanted


def min_workers(spec: JobSpec) -> int:
    workers = spec.scaling.num_workers
    return workers[0] if isinstance(workers, tuple) else workers


def fits(bundles: list[Resources], nodes: list[Resources]) -> int:
    """How many of the bundles fit on the nodes at once (first fit, largest first); each
    bundle goes on one node, as a placement group places a worker."""
    free = [dict(node) for node in nodes]
    placed = 0
    for bundle in sorted(bundles, key=lambda b: sorted(b.items()), reverse=True):
        node = next((n for n in free if all(n.get(k, 0) >= v for k, v in bundle.items())), None)
        if node is None:
            break
        for k, v in bundle.items():
            node[k] -= v
        placed += 1
    return placed


GROWS_HINT = "or pass --autoscaling if the cluster adds nodes on demand"


def check_resources(
    spec: JobSpec, nodes: list[dict[str, Any]], address: str, hint: str = GROWS_HINT
) -> None:
    wanted, count = worker_resources(spec), min_workers(spec)
    totals = [node.get("resources_total") or {} for node in nodes]
    placed = fits([wanted] * count, totals)
    if placed >= count:
        return
    asked = f"{spec.name} asks for {count} worker(s) with {describe(wanted)} each"
    missing = lacking(wanted, totals)
    view = f"{len(nodes)} node(s), {describe(summed(totals), keys=('CPU', 'GPU'))} in all"
    if missing:
        why = f"the cluster at {address} has no {', '.join(missing)} ({view})"
    else:
        why = f"only {placed} fit on the cluster at {address} ({view})"
    raise PreflightError(
        f"{asked}, but {why}. Change scaling in the spec, use a cluster that has them, {hint}"
    )


def lacking(wanted: Resources, totals: list[Resources]) -> list[str]:
    """The resources wanted that no node has any of."""
    return [k for k in wanted if not any(t.get(k, 0) for t in totals)]


def check_cluster_started_here(spec: JobSpec) -> None:
    """A cluster that `kiln train` or `kiln tune` started for itself is this machine and never
    grows: workers asking for a resource it has none of (a GPU) would wait out
    scaling.start_timeout_s for nothing. Counts are left to the run, which shares a streamed
    job's CPUs among its workers (kiln.train.runner.worker_resources)."""
    import ray

    nodes = [{"resources_total": node["Resources"]} for node in ray.nodes() if node["Alive"]]
    if not lacking(worker_resources(spec), [node["resources_total"] for node in nodes]):
        return
    address = ray.get_runtime_context().gcs_address
    check_resources(spec, nodes, f"{address} (started here)", hint="or pass its --address")


def check_storage(uris: dict[str, str], nodes: list[dict[str, Any]], shared: bool) -> None:
    """On several machines, a local path is a different disk on each: checkpoints written on
    one node are missing on the next, and the registry ends up split. Nodes on one machine
    (`kiln up` starts each as a process here, all with its IP) share its disk."""
    hosts = machines(nodes)
    if shared or hosts < 2:
        return
    for what, uri in uris.items():
        if "://" not in uri or uri.startswith("file://"):
            raise PreflightError(
                f"{what} {uri} is a local path, and the cluster's {len(nodes)} nodes run on "
                f"{hosts} machines: each would write to its own disk. Use shared storage "
                "(s3://, gs://, or a filesystem every node mounts, then pass --shared-storage); "
                "set it with KILN_REGISTRY / KILN_STORAGE or the spec's storage_path"
            )


def machines(nodes: list[dict[str, Any]]) -> int:
    """How many machines the nodes run on, by their IPs (a node without one counts alone)."""
    return len({node.get("node_ip") or f"node {i}" for i, node in enumerate(nodes)})


def summed(nodes: list[Resources]) -> Resources:
    total: Resources = {}
    for node in nodes:
        for k, v in node.items():
            total[k] = total.get(k, 0) + v
    return total


def describe(resources: Resources, keys: tuple[str, ...] | None = None) -> str:
    keys = keys or tuple(sorted(resources))
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in keys)
