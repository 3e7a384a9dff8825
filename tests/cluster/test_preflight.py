"""Pre-submit checks against a cluster's resource view (pure logic, but for the last test; the
real cluster's submissions are in test_jobs.py)."""

import pytest

from kiln.cluster.preflight import (
    check_cluster_started_here,
    check_resources,
    check_storage,
    fits,
    worker_resources,
)
from kiln.errors import PreflightError
from kiln.validate import load_spec
from tests.conftest import ROOT

CPU_NODES = [
    {"resources_total": {"CPU": 0.0}, "is_head_node": True},
    {"resources_total": {"CPU": 1.0}},
    {"resources_total": {"CPU": 1.0}},
]


def spec(*overrides: str):
    return load_spec(ROOT / "jobs" / "digits-mlp.yaml", list(overrides))


def test_worker_resources_follow_ray_scaling_config():
    unset = "scaling.resources_per_worker=null"
    assert worker_resources(spec(unset)) == {"CPU": 1}
    assert worker_resources(spec(unset, "scaling.use_gpu=true")) == {"GPU": 1}
    both = spec("scaling.use_gpu=true", "scaling.resources_per_worker={CPU: 2}")
    assert worker_resources(both) == {"CPU": 2, "GPU": 1}


def test_bundles_fit_one_node_each():
    assert fits([{"CPU": 1}] * 2, [{"CPU": 1}, {"CPU": 1}]) == 2
    assert fits([{"CPU": 2}], [{"CPU": 1}, {"CPU": 1}]) == 0  # 2 CPUs in all, but not on one node
    assert fits([{"CPU": 1, "GPU": 1}] * 3, [{"CPU": 8, "GPU": 2}]) == 2


def test_a_gpu_the_cluster_lacks_is_named():
    with pytest.raises(PreflightError, match="has no GPU") as e:
        check_resources(spec("scaling.use_gpu=true"), CPU_NODES, "http://head:8265")
    assert "2 CPU, 0 GPU in all" in str(e.value)


def test_more_workers_than_fit_are_refused():
    check_resources(spec("scaling.num_workers=2"), CPU_NODES, "http://head:8265")
    with pytest.raises(PreflightError, match="only 2 fit"):
        check_resources(spec("scaling.num_workers=3"), CPU_NODES, "http://head:8265")
    check_resources(spec("scaling.num_workers=[2, 4]"), CPU_NODES, "http://head:8265")  # elastic


def test_local_storage_is_refused_on_several_machines_unless_shared():
    local = {"registry": "/home/me/.kiln/registry"}
    hosts = [{**node, "node_ip": f"10.0.0.{i}"} for i, node in enumerate(CPU_NODES)]
    with pytest.raises(PreflightError, match="local path, and the cluster's 3 nodes run on 3"):
        check_storage(local, hosts, shared=False)
    check_storage(local, hosts, shared=True)
    check_storage(local, hosts[:1], shared=False)  # one node: one disk
    check_storage({"registry": "s3://bucket/registry"}, hosts, shared=False)


def test_nodes_of_one_machine_share_its_disk():
    """`kiln up` starts a head and workers as processes of this machine: one IP, one disk."""
    local = {"registry": "/home/me/.kiln/registry"}
    check_storage(local, [{**node, "node_ip": "127.0.0.1"} for node in CPU_NODES], shared=False)


@pytest.mark.usefixtures("ray_cluster")
def test_a_gpu_job_on_a_cluster_without_gpus_started_here_fails_at_once():
    """`kiln train --set scaling.use_gpu=true` on a machine without a GPU: refused before the
    run starts, not after scaling.start_timeout_s (600 s) of waiting (the session's cluster is
    2 CPUs, no GPU, as `kiln train` starts one here)."""
    check_cluster_started_here(spec("scaling.num_workers=2"))
    check_cluster_started_here(spec("scaling.num_workers=3"))  # counts are the run's to judge
    with pytest.raises(PreflightError, match=r"has no GPU .*pass its --address"):
        check_cluster_started_here(spec("scaling.use_gpu=true"))
