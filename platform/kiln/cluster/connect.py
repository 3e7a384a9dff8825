"""Connecting to Ray: an existing cluster when an address is given, else a local one."""

import logging
import os
from typing import Any

from kiln.settings import get_settings


def connect(
    address: str | None = None, show_logs: bool = False, metrics_export_port: int | None = None
) -> None:
    """`metrics_export_port` applies when this call starts a local cluster: Prometheus
    scrapes Ray's and Kiln's metrics there."""
    import ray

    if ray.is_initialized():
        return
    address = address or get_settings().ray_address or os.environ.get("RAY_ADDRESS")
    starts_one = not address and not local_cluster_running()
    port = metrics_export_port if starts_one else None
    extra: dict[str, Any] = {"_metrics_export_port": port} if port else {}
    ray.init(
        address=address,
        logging_level=logging.WARNING,
        log_to_driver=show_logs,  # worker logs stay in /tmp/ray/session_latest/logs
        configure_logging=True,
        **extra,
    )


def local_cluster_running() -> bool:
    """Whether a Ray cluster (a GCS process) runs on this machine."""
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())
