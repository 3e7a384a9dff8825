"""A local multi-node Ray cluster for development (`kiln up` / `kiln down`): a head and N
worker nodes, each a `ray start --block` process in a process group of its own, with its own
CPUs, ports and log. They are recorded in KILN_HOME/cluster/cluster.json so that `kiln down`
stops exactly those processes; `ray stop` would stop every Ray on the machine.

    cluster = up(workers=2, cpus_per_worker=1)
    cluster.dashboard      # http://127.0.0.1:8265, for kiln submit / kiln jobs
    down()
"""

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.cluster.dashboard import alive_nodes, find_token
from kiln.errors import ClusterError
from kiln.settings import get_settings

HOST = "127.0.0.1"
_children: dict[int, subprocess.Popen] = {}  # the nodes this process started, reaped here


@dataclass
class Node:
    name: str
    pid: int  # of `ray start --block`, the leader of the node's process group
    cpus: float
    metrics_port: int
    log: str
    temp_dir: str | None = None  # a worker's own Ray folder (sockets, unpacked working_dirs)

    def alive(self) -> bool:
        """Whether any process of the node's group is left."""
        if child := _children.get(self.pid):
            child.poll()  # reaps an exited `ray start`, which would count as alive
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


@dataclass
class LocalCluster:
    address: str  # the GCS, for ray.init / RAY_ADDRESS
    dashboard: str  # the Jobs, Serve and State APIs
    token_auth: bool
    nodes: list[Node] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "LocalCluster":
        return cls(**{**raw, "nodes": [Node(**n) for n in raw["nodes"]]})


def state_file() -> Path:
    return Path(get_settings().home).resolve() / "cluster" / "cluster.json"


def recorded() -> LocalCluster | None:
    try:
        return LocalCluster.from_json(json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def running_dashboard() -> str | None:
    cluster = recorded()
    return cluster.dashboard if cluster and cluster.nodes[0].alive() else None


def up(
    workers: int = 2,
    cpus_per_worker: float = 1,
    head_cpus: float = 0,
    port: int = 6379,
    dashboard_port: int = 8265,
    object_store_mb: int = 512,
    timeout_s: float = 120,
) -> LocalCluster:
    """Starts the head, then each worker once the node before it has joined. Each worker keeps
    its own Ray folder, as a node on its own machine would: nodes sharing one would race for
    socket names, and each node's runtime-env agent would re-unpack a job's working_dir under
    the feet of the processes already running in it."""
    if (old := recorded()) and any(n.alive() for n in old.nodes):
        raise ClusterError(
            f"kiln up already runs a cluster here (dashboard {old.dashboard}); `kiln down` stops it"
        )
    folder = state_file().parent
    folder.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(f"{HOST}:{port}", f"http://{HOST}:{dashboard_port}", token_auth())
    common = ["--block", f"--object-store-memory={object_store_mb << 20}"]
    head = [
        "--head",
        f"--port={port}",
        f"--dashboard-host={HOST}",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
    ]
    try:
        cluster.nodes.append(_start(folder, "head", head_cpus, common + head, cluster.token_auth))
        _save(cluster)
        _wait_for_dashboard(cluster, timeout_s)
        _wait_for_nodes(cluster, timeout_s)
        for i in range(workers):
            temp_dir = f"{tempfile.gettempdir()}/ray-kiln-{port}-w{i + 1}"  # short: socket paths
            name = f"worker-{i + 1}"
            _join_worker(cluster, folder, name, cpus_per_worker, common, temp_dir, timeout_s)
    except BaseException:
        down()
        raise
    return cluster


def down(timeout_s: float = 30) -> LocalCluster | None:
    """Stops the recorded nodes, workers first: SIGTERM to each node's process group (Ray then
    stops its processes), SIGKILL to whatever is left after `timeout_s`."""
    cluster = recorded()
    if cluster is None:
        return None
    for node in reversed(cluster.nodes):
        _signal(node, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(n.alive() for n in cluster.nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    for node in cluster.nodes:
        _signal(node, signal.SIGKILL)
        if node.temp_dir:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    _forget_as_default(cluster.address)
    state_file().unlink(missing_ok=True)
    return cluster


def token_auth() -> bool:
    """Whether `ray start` will turn token auth on: as RAY_AUTH_MODE says, else when a token
    exists where Ray looks (Ray's own rule, so that Kiln's report matches the cluster)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    return mode.lower() == "token" if mode else find_token() is not None


# A node's raylet starts at most as many worker processes at a time as the node has CPUs.
# A run starts its controller, Ray Train's synchronization actor and its workers at once: on
# 2 CPUs they started in waves (the second worker 0.7 s after the first, then waiting for it),
# and `kiln train jobs/digits-cnn.yaml` reached its first epoch in a median 9.6 s with 4 at a
# time against 10.4 s (6 runs each). On a node of 1 CPU, one process at a time.
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"
MIN_STARTUP_CONCURRENCY = 4


def startup_concurrency(cpus: float | None = None) -> str:
    """Ray's default (the node's CPUs; this machine's when not given), but never fewer than a
    run's first processes."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return str(max(MIN_STARTUP_CONCURRENCY, math.ceil(cpus)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ray_cli(*args: str) -> list[str]:
    """A `ray` command line of the Ray this process imports (not whichever is on PATH, and
    found where no `ray` script lies beside the interpreter: `pip install --target`, a
    PYTHONPATH bundle)."""
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def ray_start(*args: str) -> list[str]:
    return ray_cli("start", *args, "--disable-usage-stats")


def start_detached_head(metrics_port: int) -> bool:
    """A head node that outlives this process (`kiln serve --detach`), unless one runs here;
    whether it started one."""
    if local_cluster_running():
        return False
    command = ray_start(
        "--head", f"--dashboard-host={HOST}", f"--metrics-export-port={metrics_port}"
    )
    env = {STARTUP_CONCURRENCY_ENV: startup_concurrency(), **os.environ}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise ClusterError(f"ray start failed: {done.stderr.strip().splitlines()[-1:]}")
    return True


def stop_detached_head() -> None:
    """`ray stop` of this environment's Ray: what `start_detached_head` started."""
    done = subprocess.run(ray_cli("stop"), capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"ray stop failed: {done.stderr.strip().splitlines()[-1:]}")


# What `ray start` says when its node's raylet did not register with the GCS within Ray's
# fixed 30 s: on a busy machine a retry joins (the cluster and the GCS are healthy).
SLOW_NODE_START = "timed out during startup"


def _join_worker(
    cluster: LocalCluster,
    folder: Path,
    name: str,
    cpus: float,
    common: list[str],
    temp_dir: str,
    timeout_s: float,
) -> None:
    """Starts a worker node and waits for it to join, starting it again within `timeout_s`
    when Ray gave up on it only because the machine was slow."""
    args = common + [f"--address={cluster.address}", f"--temp-dir={temp_dir}"]
    deadline = time.monotonic() + timeout_s
    while True:
        node = _start(folder, name, cpus, args, cluster.token_auth)
        node.temp_dir = temp_dir
        cluster.nodes.append(node)
        _save(cluster)
        try:
            _wait_for_nodes(cluster, max(deadline - time.monotonic(), 1))
            return
        except ClusterError:
            if SLOW_NODE_START not in Path(node.log).read_text() or time.monotonic() > deadline:
                raise
        cluster.nodes.pop()
        _signal(node, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start(folder: Path, name: str, cpus: float, args: list[str], auth: bool) -> Node:
    metrics_port = free_port()
    log = folder / f"{name}.log"
    command = ray_start(
        *args,
        f"--num-cpus={cpus:g}",
        f"--metrics-export-port={metrics_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--min-worker-port=0",  # random ports: no clash with another Ray on this machine
        "--max-worker-port=0",
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_node_env(auth, cpus),
            start_new_session=True,
        )
    _children[process.pid] = process
    return Node(name, process.pid, cpus, metrics_port, str(log))


def _node_env(token_auth: bool, cpus: float) -> dict[str, str]:
    """This Python's bin first on PATH, so that a job's `python -m kiln` is this environment's;
    the same auth mode on every node (workers do not infer it as the head does); RAY_ADDRESS
    dropped, so that the head does not take it for a cluster to join; a short drain on SIGTERM
    (a development cluster stops at once); worker processes started as `startup_concurrency`
    says."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault(STARTUP_CONCURRENCY_ENV, startup_concurrency(cpus))
    env["RAY_AUTH_MODE"] = "token" if token_auth else "disabled"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "1")
    return env


def _wait_for_dashboard(cluster: LocalCluster, timeout_s: float) -> None:
    import requests

    head = cluster.nodes[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(head)
        try:
            if requests.get(f"{cluster.dashboard}/api/version", timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ClusterError(
        f"the head's dashboard did not answer in {timeout_s:.0f} s (log: {head.log})"
    )


def _wait_for_nodes(cluster: LocalCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(alive_nodes(cluster.dashboard)) < len(cluster.nodes):
        for node in cluster.nodes:
            _check_alive(node)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{cluster.nodes[-1].name} did not join in {timeout_s:.0f} s "
                f"(log: {cluster.nodes[-1].log})"
            )
        time.sleep(0.5)


def _check_alive(node: Node) -> None:
    """A node whose `ray start` exited (a port in use, a bad option) fails with its reason."""
    child = _children.get(node.pid)
    if child is None or child.poll() is None:
        return
    lines = [ln.strip() for ln in Path(node.log).read_text().splitlines() if ln.strip()]
    named = (ln for ln in reversed(lines) if "rror" in ln or "xception" in ln)
    reason = next(named, lines[-1] if lines else "")
    raise ClusterError(f"ray start ({node.name}) exited: {reason[:300]} (log: {node.log})")


def _signal(node: Node, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(node.pid, sig)


def _save(cluster: LocalCluster) -> None:
    state_file().write_text(json.dumps(cluster.to_json(), indent=2))


def _forget_as_default(address: str) -> None:
    """`ray start --head` made this cluster the one a bare `ray.init()` joins; undo that, as
    `ray stop` does, so that the next `ray.init()` does not look for a cluster that is gone."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    port = address.rsplit(":", 1)[-1]  # Ray writes the node's IP there, not 127.0.0.1
    with contextlib.suppress(OSError):
        if path.read_text().strip().rsplit(":", 1)[-1] == port:
            path.unlink()


def local_cluster_running() -> bool:
    """Whether a Ray cluster (a GCS process) runs on this machine."""
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


def joinable_cluster() -> bool:
    """Whether a Ray cluster runs here that Ray joins when given no address: the one the last
    `ray start` recorded (`kiln up`, `kiln serve --detach`), still running. A cluster that
    another command started for itself with ray.init (a `kiln train`, a `kiln serve` in the
    foreground) is that process's own: Ray never joins it, and it goes when the process ends."""
    from ray._private.services import find_bootstrap_address

    recorded = find_bootstrap_address(None)  # HOST:PORT of its GCS; `ray stop` removes it
    if not recorded:
        return False
    host, _, port = recorded.rpartition(":")
    # a cluster killed without `ray stop` leaves the record behind
    return port.isdigit() and unreachable(host, int(port), timeout_s=2) is None


def unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """Why nothing answers at HOST:PORT, or None when something does."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return str(e.strerror or e)
    return None
