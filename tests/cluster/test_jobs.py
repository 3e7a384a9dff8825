"""`kiln up`, `kiln submit`, `kiln jobs` and `kiln down` against a real multi-node cluster:
a head and two worker nodes, each a `ray start` process started by `kiln up`, with Ray's
token authentication on. The registry and run storage are directories both sides reach."""

import json
import os
import secrets
import time

import pytest

from kiln.registry import ModelRegistry
from tests.conftest import free_port, run_kiln

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(ray_cluster, tmp_path_factory):
    """`kiln up` with the session's own Ray running beside it."""
    home = tmp_path_factory.mktemp("cluster")
    token = secrets.token_hex(16)
    env = {"KILN_HOME": str(home), "RAY_AUTH_TOKEN": token}
    up = run_kiln(
        *("up", "--workers", "2", "--port", str(free_port())),
        *("--dashboard-port", str(free_port()), "--json"),
        env={**env, "RAY_AUTH_MODE": "token"},
        timeout=180,
    )
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    env |= {
        "KILN_RAY_ADDRESS": info["dashboard"],
        "KILN_REGISTRY": str(home / "registry"),
        "KILN_STORAGE": str(home / "runs"),
    }
    yield {"env": env, "info": info, "registry": home / "registry"}
    run_kiln("down", env=env)


def kiln(cluster, *args: str, timeout: float = 240, **env: str):
    return run_kiln(*args, env={**cluster["env"], **env}, timeout=timeout)


def submitted(cluster) -> list[str]:
    listed = kiln(cluster, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [job["submission_id"] for job in json.loads(listed.stdout)]


def test_the_cluster_has_a_head_and_two_workers(cluster):
    nodes = cluster["info"]["nodes"]
    assert [n["name"] for n in nodes] == ["head", "worker-1", "worker-2"]
    assert cluster["info"]["token_auth"] is True


def test_a_gpu_the_cluster_lacks_is_refused_before_submitting(cluster):
    """Local storage passes first: the three nodes are processes of this machine, one disk."""
    gpu = ("--set", "scaling.use_gpu=true")
    done = kiln(cluster, "submit", "jobs/digits-cnn.yaml", *gpu)
    assert done.returncode == 2 and "has no GPU" in done.stderr, done.stderr
    assert submitted(cluster) == []


def a_project(tmp_path, files: dict[str, bytes]):
    """A user's directory: a job spec on its own data/train.csv, and `files`."""
    (tmp_path / "job.yaml").write_text(
        "name: mine\ntask: classification\n"
        "data: {name: table, path: data/train.csv, params: {label: label}}\n"
        "model: {family: mlp}\nregister: {name: mine}\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.csv").write_text("a,label\n" + "1.0,0\n2.0,1\n" * 20)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


def test_data_that_gitignore_leaves_out_is_refused_before_submitting(cluster, tmp_path):
    project = a_project(tmp_path, {".gitignore": b"data/\n"})
    args = ("submit", "job.yaml", "--shared-storage")
    done = run_kiln(*args, env=cluster["env"], cwd=project, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "data.path data/train.csv would not be uploaded with the job: .gitignore" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert submitted(cluster) == []


def test_an_upload_over_the_jobs_api_cap_is_one_line(cluster, tmp_path):
    """Just over the cap, the estimate lets it go: the cluster's 413 is then the same line."""
    project = a_project(tmp_path, {"data/extra.bin": os.urandom(101 * 2**20)})
    args = ("submit", "job.yaml", "--shared-storage")
    done = run_kiln(*args, env=cluster["env"], cwd=project, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "over the 100 MiB that Ray's Jobs API takes: largest data/extra.bin" in done.stderr
    assert "Traceback" not in done.stderr and "413" not in done.stderr
    assert submitted(cluster) == []


def test_submit_follow_trains_on_two_nodes_and_registers(cluster):
    done = kiln(
        cluster,
        *("submit", "jobs/digits-mlp.yaml", "--set", "train.epochs=3"),
        *("--set", "scaling.num_workers=2", "--shared-storage", "--follow"),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "epoch   3/3" in done.stdout and "registered digits-mlp@1" in done.stdout
    [submission_id] = submitted(cluster)
    assert f"{submission_id}: SUCCEEDED" in done.stderr

    version = ModelRegistry(str(cluster["registry"])).resolve("digits-mlp@staging")
    lineage = json.loads(ModelRegistry(str(cluster["registry"])).read(version, "lineage.json"))
    assert lineage["run_name"] == submission_id  # the model points back at its job

    status = kiln(cluster, "jobs", "status", submission_id, "--json")
    assert status.returncode == 0
    job = json.loads(status.stdout)
    assert job["status"] == "SUCCEEDED"
    assert job["metadata"]["kiln_job"] == "digits-mlp"
    assert job["metadata"]["spec"] == "jobs/digits-mlp.yaml"
    assert job["metadata"]["git_commit"]
    assert "KILN_REGISTRY" in job["runtime_env"]["env_vars"]  # names only, never values


def test_stop_a_running_job(cluster):
    # No early stopping: digits-mlp's (patience 4) could end the job before it is stopped.
    started = kiln(
        cluster,
        *("submit", "jobs/digits-mlp.yaml", "--set", "train.epochs=500"),
        *("--set", "train.early_stopping=null"),
        *("--set", "scaling.num_workers=2", "--shared-storage", "--json"),
    )
    assert started.returncode == 0, started.stderr
    submission_id = json.loads(started.stdout)["submission_id"]
    deadline = time.monotonic() + 120
    while "epoch   1/500" not in (logs := kiln(cluster, "jobs", "logs", submission_id)).stdout:
        assert time.monotonic() < deadline, logs.stdout[-2000:] + logs.stderr
        time.sleep(2)
    assert kiln(cluster, "jobs", "status", submission_id).returncode == 6  # still running

    stopped = kiln(cluster, "jobs", "stop", submission_id)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stderr
    assert kiln(cluster, "jobs", "status", submission_id).returncode == 5


@pytest.mark.parametrize(
    "args, env, code, message",
    [
        (["jobs", "list", "--address", "http://127.0.0.1:{port}"], {}, 1, "cannot reach a Ray"),
        (
            ["jobs", "list"],
            {"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "/nonexistent"},
            1,
            "needs a token",
        ),
        (["jobs", "list"], {"RAY_AUTH_TOKEN": "not-the-token"}, 1, "refused the token"),
        (["jobs", "status", "no-such-job"], {}, 3, "no job 'no-such-job'"),
        (["jobs", "logs", "no-such-job"], {}, 3, "no job 'no-such-job'"),
        (["up"], {}, 1, "kiln up already runs a cluster here"),
    ],
)
def test_mistakes_are_one_line(cluster, args, env, code, message):
    args = [a.format(port=free_port()) for a in args]
    done = kiln(cluster, *args, timeout=60, **env)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_down_stops_exactly_its_processes(cluster, ray_cluster):
    done = kiln(cluster, "down")
    assert done.returncode == 0 and "stopped 3 nodes" in done.stdout, done.stderr
    for node in cluster["info"]["nodes"]:
        with pytest.raises(ProcessLookupError):
            os.killpg(node["pid"], 0)  # no process of the node's group is left
    assert ray_cluster.cluster_resources()["CPU"] == 2  # the session's own Ray is untouched
    assert ray_cluster.get(ray_cluster.put("still here")) == "still here"
    assert kiln(cluster, "jobs", "list").returncode == 1  # nothing answers any more
