"""`kiln up`'s worker start, as logic: a node Ray gave up on only because the machine was
slow is started again; any other failure is reported at once. (tests/cluster/test_jobs.py
starts real clusters.)"""

import pytest

from kiln.cluster import local
from kiln.errors import ClusterError

SLOW = "Exception: The current node timed out during startup. This could happen because ..."


@pytest.fixture
def attempts(tmp_path, monkeypatch):
    """Worker starts whose logs say, in turn, what `logs` holds; the node joins once a log is
    empty. Records each start and each signalled node."""
    record = {"logs": [], "started": [], "killed": []}

    def start(folder, name, cpus, args, auth):
        log = tmp_path / f"{name}-{len(record['started'])}.log"
        log.write_text(record["logs"][len(record["started"])])
        record["started"].append(args)
        return local.Node(name, 1000 + len(record["started"]), cpus, 0, str(log))

    def wait_for_nodes(cluster, timeout_s):
        if (tmp_path / f"{cluster.nodes[-1].name}-{len(record['started']) - 1}.log").read_text():
            raise ClusterError("ray start (worker-1) exited")

    monkeypatch.setattr(local, "_start", start)
    monkeypatch.setattr(local, "_wait_for_nodes", wait_for_nodes)
    monkeypatch.setattr(local, "_signal", lambda node, sig: record["killed"].append(node.pid))
    monkeypatch.setattr(local, "state_file", lambda: tmp_path / "cluster.json")
    return record


def join(tmp_path) -> local.LocalCluster:
    cluster = local.LocalCluster("127.0.0.1:6379", "http://127.0.0.1:8265", False)
    local._join_worker(cluster, tmp_path, "worker-1", 1.0, ["--block"], str(tmp_path / "w1"), 60)
    return cluster


def test_a_worker_ray_gave_up_on_as_slow_is_started_again(tmp_path, attempts):
    attempts["logs"] = [SLOW, ""]
    cluster = join(tmp_path)
    assert len(attempts["started"]) == 2 and attempts["killed"] == [1001]
    assert [(n.name, n.pid) for n in cluster.nodes] == [("worker-1", 1002)]
    assert f"--temp-dir={tmp_path / 'w1'}" in attempts["started"][1]


def test_any_other_failure_is_reported_without_a_retry(tmp_path, attempts):
    attempts["logs"] = ["OSError: [Errno 98] Address already in use", ""]
    with pytest.raises(ClusterError):
        join(tmp_path)
    assert len(attempts["started"]) == 1


@pytest.mark.parametrize(
    "cpus, concurrency", [(0, "4"), (1, "4"), (2, "4"), (6.5, "7"), (16, "16")]
)
def test_a_node_starts_a_run_s_first_processes_at_once_never_fewer_than_ray_would(
    cpus, concurrency, monkeypatch
):
    """Ray's default is the node's CPUs: a run's controller, synchronization actor and two
    workers started in waves on 2. A user's own setting wins."""
    monkeypatch.delenv(local.STARTUP_CONCURRENCY_ENV, raising=False)
    assert local._node_env(False, cpus)[local.STARTUP_CONCURRENCY_ENV] == concurrency
    monkeypatch.setenv(local.STARTUP_CONCURRENCY_ENV, "2")
    assert local._node_env(False, cpus)[local.STARTUP_CONCURRENCY_ENV] == "2"
