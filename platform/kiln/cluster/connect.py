"""Connecting to Ray: an existing cluster when an address is given, else a local one."""

import contextlib
import importlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from kiln.cluster.address import given_address
from kiln.cluster.local import (
    STARTUP_CONCURRENCY_ENV,
    joinable_cluster,
    startup_concurrency,
    unreachable,
)
from kiln.errors import ClusterError
from kiln.settings import REPORT_POLL


def connect(
    address: str | None = None,
    show_logs: bool = False,
    metrics_export_port: int | None = None,
    dashboard: bool = True,
    preload: Sequence[str] = (),
) -> bool:
    """Whether this call started a local cluster. `metrics_export_port` and `dashboard` apply
    when it does: Prometheus scrapes Ray's and Kiln's metrics there. Ray's dashboard starts ten
    processes of its own (a second of a 2-core machine while a run starts); `kiln serve`
    deploys through its REST API, and Ray Train's placement-group cleaner watches a run's
    controller through its State API (a cluster that this process owns goes with the process,
    and its placement groups with it). The modules in `preload` are imported meanwhile."""
    import ray

    if ray.is_initialized():
        return False
    source, address = given_address(address)
    # Decided as Ray decides, then said to Ray: `ray.init()` joins only the cluster `ray start`
    # recorded, and starts its own beside a cluster another command started for itself (whose
    # GCS runs here too). Judged by any GCS, a `kiln train` beside a `kiln serve` took the
    # cluster Ray then started for it as someone else's: without Kiln's settings for a local
    # cluster, and `kiln serve` beside a `kiln train` without its metrics port.
    starts_one = address == "local" or (not address and not joinable_cluster())
    if starts_one:
        logging.getLogger(TOKEN_SETUP_LOGGER).addFilter(quiet_default_token_notice)
        for name, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(name, value)
    elif address and address != "auto":  # Ray's word for "find the one running here"
        check_reachable(address, source)
    port = metrics_export_port if starts_one else None
    extra: dict[str, Any] = {"_metrics_export_port": port} if port else {}
    if starts_one and not dashboard:
        extra["include_dashboard"] = False
    try:
        with importing(preload):
            ray.init(
                address="local" if starts_one else address,
                logging_level=logging.WARNING,
                log_to_driver=show_logs,  # worker logs stay in /tmp/ray/session_latest/logs
                configure_logging=True,
                **extra,
            )
    except ConnectionError as e:
        raise ClusterError(
            f"could not join the Ray cluster at {address}: {e}{TOKEN_HINT}"
        ) from None
    _stop_on_sigterm()
    return starts_one


def _stop_on_sigterm() -> None:
    """`kill`, `timeout`, `ray job stop` and Kubernetes stop a command as Ctrl-C does: a run
    is aborted and says how to continue it, a search stops as Tune stops on Ctrl-C. Ray's
    driver handler exits at once, after a stack dump from Ray's core that reads as a crash."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)


def _as_ctrl_c(signum: int, frame: Any) -> None:
    handler = signal.getsignal(signal.SIGINT)  # Tune's while a search runs
    if not callable(handler):  # ignored (a background job of a script), or the OS default
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


@contextlib.contextmanager
def importing(modules: Sequence[str]) -> Iterator[None]:
    """Imports `modules` in a thread while the block runs. A new local Ray spends seconds
    waiting for its processes, and a run's own imports (torch, Ray Train: 2-3 s of CPU) fit
    in them: `kiln train` reached Ray and its trainer in 4.9 s instead of 7.0 s here."""
    thread = threading.Thread(target=_import_each, args=(modules,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _import_each(modules: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # imported again where it is used, and its error raised there
            return


# Ray sends its token only to a cluster it finds itself, not to an address it is given.
TOKEN_HINT = (
    ". A cluster with token authentication needs RAY_AUTH_MODE=token here, and its token in "
    "RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token"
)
REACH_TIMEOUT_S = 5


def check_reachable(address: str, source: str = "--address") -> None:
    """A GCS address (HOST:PORT, or ray://HOST:PORT for Ray Client) that answers; else one
    line now, where `ray.init` would retry for minutes. A dashboard URL is refused: runs join
    a cluster at its GCS, and `kiln submit` is what sends a job to a dashboard."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if parts.scheme not in ("", "ray", "http", "https"):
        return  # another scheme's client (a Ray plugin's): ray.init knows it
    if parts.scheme in ("http", "https"):
        raise ClusterError(
            f"{source} {address} is a dashboard: a run joins a cluster at its GCS "
            "(HOST:6379), and `kiln submit` sends a job to a dashboard"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ClusterError(f"{address} is not a Ray cluster address (HOST:PORT)")
    if why := unreachable(host, port, REACH_TIMEOUT_S):
        raise ClusterError(f"no Ray cluster answers at {address}: {why}")


# A cluster this process starts is this one machine: none of its nodes is drained for
# preemption, so Ray Train's preemption watcher, an actor process started for every run
# (a second of CPU on a small machine), stays off (read by the run's controller); no
# autoscaler can add a node, so runs send Ray's autoscaling coordinator nothing (read by
# kiln.settings, in this process and in the cluster's, which inherit it: a search's trials);
# and its raylet does not start an idle worker per CPU when this driver connects: they
# competed with the command's own start for the CPUs (the Train actors, with their own
# runtime env, never use them), and `kiln train jobs/digits-cnn.yaml` reached its first
# epoch 0.4 s sooner without them; its raylet starts a run's processes at once
# (kiln.cluster.local's `startup_concurrency`); and every process of it inherits Ray Train's
# variables from its environment, Kiln's report poll and Ray Train's own quiet blocking-get
# warning among them, so that a run's processes need no runtime env (kiln.train.runtime_env).
LOCAL_CLUSTER_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "KILN_AUTOSCALING_REQUESTS": "0",
    "RAY_prestart_worker_first_driver": "0",
    STARTUP_CONCURRENCY_ENV: startup_concurrency(),
    "KILN_TRAIN_ENV_INHERITED": "1",
    REPORT_POLL[0]: REPORT_POLL[1],
    "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0",
}

TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_default_token_notice(record: logging.LogRecord) -> bool:
    """Ray warns on every local start that it turned token authentication on by default:
    nothing a Kiln user can act on (`kiln cluster up` reports the cluster's auth). Its
    warning that authentication is off stays."""
    return not record.getMessage().startswith("Token authentication is enabled")
