"""Shared fixtures: one local Ray cluster per test session, a Kiln home per session, and
helpers to run the CLI as a user does."""

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cluster.connect import LOCAL_CLUSTER_ENV

# Before Ray starts: fast health checks (crashed workers are noticed quickly), no telemetry,
# and no token auth for this hermetic, loopback-only cluster.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray Train's wait for the workers' placement group before it retries (60 s by default): short,
# so that the start-timeout test is quick (kiln.train.runner.start_retries scales with it).
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "4")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The session's cluster is local, as `kiln train` starts one (no preemption watcher).
for name, value in LOCAL_CLUSTER_ENV.items():
    os.environ.setdefault(name, value)
# Serving as `kiln serve` runs it (the HAProxy ingress), with metrics reported every second
# instead of every ten so that a test sees its requests counted quickly.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
# Under the HAProxy ingress a stopping replica drains for at least 30 s, for external load
# balancers to deregister it; every teardown and scale-down in the suite waited for it. The
# session's cluster is one node with no load balancer in front of its HAProxy: 5 s suffice.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5")


# Ports Ray's processes take by default (the dashboard agent's HTTP port among them): a free
# port handed to Ray for another component must not be one of them (Ray refuses the start).
RAY_DEFAULT_PORTS = {6379, 8000, 8001, 8076, 8265, 9000, 10001, 52365, 52366}


def free_port() -> int:
    """A free port that no other process is handed while the suite runs: not from the
    kernel's ephemeral range, where every bind to port 0 takes one (Ray's agents and actors
    under `ray.init`), nor from `ray start`'s worker ports (10002-19999). Taken from the
    ephemeral range as the session started, the Serve tests' port was bound by a Ray process
    before they used it, 20 minutes later, and every deployment after failed (a CI run)."""
    ephemeral = ephemeral_ports()
    quiet = [p for p in range(20000, 65536) if p not in ephemeral and p not in _handed_out]
    for port in _random.sample(quiet, min(len(quiet), 200)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # every port is ephemeral here: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default
    return range(low, high + 1)


_random = random.SystemRandom()  # not the tests' seeded generator
_handed_out = set(RAY_DEFAULT_PORTS)


# HAProxy's own metrics and stats ports are fixed by default; a user's `kiln serve` on this
# machine must not collide with the tests'.
os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))

ROOT = Path(__file__).resolve().parent.parent


def speech_corpus() -> Path:
    """The whole spoken-digit corpus where `make test` found it (KILN_SPEECH_DATA, from
    ../shared), else the 400 recordings that ship with Kiln."""
    from kiln.data.speech import BUNDLED

    given = os.environ.get("KILN_SPEECH_DATA")
    return Path(given) if given and Path(given).is_dir() else BUNDLED


@pytest.fixture(scope="session")
def kiln_home(tmp_path_factory) -> Path:
    """One KILN_HOME (registry and runs) for the session; tests that need their own set it."""
    home = tmp_path_factory.mktemp("kiln-home")
    os.environ["KILN_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def ray_cluster(kiln_home):
    import ray

    # The dashboard stays on: Ray Train's placement-group cleaner asks the State API (served by
    # the dashboard) whether a stopped trial's controller is gone; without it, the placement
    # groups of trials that ASHA stops are never removed and later trials cannot start.
    ray.init(
        address="local",  # a cluster of its own, even where `ray start` or `kiln up` runs one
        num_cpus=2,
        object_store_memory=300 * 1024**2,
        log_to_driver=False,
        _metrics_export_port=free_port(),
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A KILN_HOME of this test's own (an empty registry)."""
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_kiln(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """`kiln ARGS` in a new process, from the repo root (or `cwd`), as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_in_foreground(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`command` started as a terminal runs it in the foreground, where Ctrl-C's SIGINT is not
    ignored (its output read through pipes). A suite started in the background by a shell
    without job control (`make test &`, `nohup ... &`) inherits SIGINT ignored, and so would
    the command: it would not stop."""
    reset = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", reset, *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def quiet_view(spec):
    """A progress view that draws nothing (tests read its events)."""
    from rich.console import Console

    from kiln.train.progress import ProgressView

    metric = spec.checkpoint.metric
    return ProgressView(spec.name, spec.train.epochs, metric, Console(quiet=True), quiet=True)


@pytest.fixture(scope="session")
def digits_cnn(ray_cluster):
    """digits-cnn trained once (2 DDP workers) and registered in the session's KILN_HOME."""
    from kiln.train import run_job
    from kiln.validate import load_spec

    spec = load_spec(ROOT / "jobs" / "digits-cnn.yaml")
    return spec, run_job(spec, quiet_view(spec))


@pytest.fixture(scope="session")
def spoken_digits_cnn(ray_cluster):
    """jobs/spoken-digits-cnn.yaml on the corpus `make test` found (2 DDP workers, FSDD's
    index split), registered in the session's KILN_HOME."""
    from kiln.train import run_job
    from kiln.validate import load_spec

    spec = load_spec(ROOT / "jobs/spoken-digits-cnn.yaml", [f"data.path={speech_corpus()}"])
    return spec, run_job(spec, quiet_view(spec))
