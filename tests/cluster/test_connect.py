"""Joining a Ray cluster at an address: a wrong one fails in one line, at once. Without an
address, the cluster `ray start` recorded is joined, and none other."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from kiln.cluster.address import given_address
from kiln.cluster.connect import LOCAL_CLUSTER_ENV, check_reachable
from kiln.errors import ClusterError
from tests.conftest import ROOT, run_kiln


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_an_address_where_nothing_listens_fails_at_once():
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"no Ray cluster answers at 127\.0\.0\.1:\d+"):
        check_reachable(f"127.0.0.1:{closed_port()}")
    assert time.perf_counter() - started < 5  # ray.init would retry for minutes


def test_a_dashboard_url_is_not_a_cluster_address():
    with pytest.raises(ClusterError, match="--address http://127.0.0.1:8265 is a dashboard"):
        check_reachable("http://127.0.0.1:8265")


def test_the_error_names_where_the_address_came_from(monkeypatch):
    """`ray job submit` users often export RAY_ADDRESS=http://HEAD:8265; the README has
    KILN_RAY_ADDRESS name a dashboard for `kiln submit` and `kiln jobs`."""
    monkeypatch.delenv("KILN_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    source, address = given_address(None)
    assert (source, address) == ("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ClusterError, match="^RAY_ADDRESS http://127.0.0.1:8265 is a dashboard"):
        check_reachable(address, source)
    assert given_address("10.0.0.5:6379") == ("--address", "10.0.0.5:6379")
    monkeypatch.delenv("RAY_ADDRESS")
    assert given_address(None) == ("", None)


@pytest.mark.parametrize("address", ["head-node", "head-node:port", ":6379"])
def test_an_address_without_host_and_port_is_refused(address):
    with pytest.raises(ClusterError, match="is not a Ray cluster address"):
        check_reachable(address)


def test_other_schemes_are_left_to_ray():
    check_reachable("anyscale://my-cluster")


def test_an_address_that_answers_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
        check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")


def test_kiln_train_at_a_wrong_address_is_one_line_and_no_wait():
    result = run_kiln("train", "jobs/digits-mlp.yaml", "--address", f"127.0.0.1:{closed_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no Ray cluster answers at 127.0.0.1:")
    assert "Traceback" not in result.stderr


CONNECT_AND_SAY = """
import json, os, ray
from kiln.cluster.connect import connect
started = connect()
said = {"started": started, "gcs": ray.get_runtime_context().gcs_address}
said["local_settings"] = os.environ.get("KILN_TRAIN_ENV_INHERITED") == "1"
print(json.dumps(said))
"""


def test_a_cluster_another_process_started_for_itself_is_not_taken_for_a_shared_one(
    ray_cluster,
):
    """This test session's Ray is such a cluster (ray.init, as `kiln train` or a foreground
    `kiln serve` starts one): Ray starts another beside it, and Kiln must know it did (its
    local settings, the metrics port, Ctrl-C stopping only what it started)."""
    code = ["-c", CONNECT_AND_SAY]
    given = {"RAY_ADDRESS", "KILN_RAY_ADDRESS", *LOCAL_CLUSTER_ENV}  # as a new terminal has
    env = {k: v for k, v in os.environ.items() if k not in given}
    done = subprocess.run(
        [sys.executable, *code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["gcs"] != ray_cluster.get_runtime_context().gcs_address
    assert said == {**said, "started": True, "local_settings": True}
