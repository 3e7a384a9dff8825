"""Which Ray cluster a command talks to: the one rule every command that takes `--address`
follows (kiln submit, kiln jobs, kiln serve status and shutdown, kiln bench --soak).

    dashboard = resolve_address(args.address)                        # or a one-line error
    dashboard = resolve_address(args.address, fallback=LOCAL_DASHBOARD)
"""

import os

from kiln.cluster import local
from kiln.cluster.dashboard import with_scheme
from kiln.errors import ClusterError
from kiln.settings import get_settings

LOCAL_DASHBOARD = "http://127.0.0.1:8265"  # where `ray start --head` puts it by default


def given_address(address: str | None) -> tuple[str, str | None]:
    """Where an address comes from, and the address: --address, else KILN_RAY_ADDRESS, else
    Ray's RAY_ADDRESS (None: none given). A dashboard for the commands here, a GCS for the runs
    that `kiln.cluster.connect` joins."""
    for source, value in (
        ("--address", address),
        ("KILN_RAY_ADDRESS", get_settings().ray_address),
        ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS")),
    ):
        if value:
            return source, value
    return "", None


def resolve_address(address: str | None, fallback: str | None = None) -> str:
    """The dashboard URL: --address, else KILN_RAY_ADDRESS, else Ray's own RAY_ADDRESS or
    RAY_DASHBOARD_ADDRESS, else the cluster `kiln up` started, else `fallback`."""
    found = (
        given_address(address)[1]
        or os.environ.get("RAY_DASHBOARD_ADDRESS")
        or local.running_dashboard()
        or fallback
    )
    if not found:
        raise ClusterError(
            "no Ray cluster given: pass --address http://HEAD:8265, set KILN_RAY_ADDRESS, "
            "or start a local one with `kiln up`"
        )
    return with_scheme(found.rstrip("/"))  # a dashboard, never a GCS port
