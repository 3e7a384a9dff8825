"""Connecting to Ray: an existing cluster when an address is given, else a local one."""

import logging
import os

from kiln.settings import get_settings


def connect(address: str | None = None, show_logs: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or get_settings().ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address,
        logging_level=logging.WARNING,
        log_to_driver=show_logs,  # worker logs stay in /tmp/ray/session_latest/logs
        configure_logging=True,
    )
