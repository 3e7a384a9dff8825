"""Which servers Serve's HAProxy ingress sends an application's requests to, from HAProxy's
stats page (Ray 2.60 runs HAProxy on each node when RAY_SERVE_ENABLE_HA_PROXY=1).

HAProxy sends requests straight to the ingress replicas, and to the node's Python Serve proxy
only as a backup while no replica is UP: for a moment after a deploy, before its health checks
pass. Under overload that backup path starves: the replica admits direct requests into its
queue first, so a request that came through the proxy waits until the load stops (seen here:
15 s in a 15 s overload). A deploy is therefore ready once HAProxy routes to a replica."""

import csv
import io
import os
from urllib.parse import urlsplit

import httpx

from kiln.cluster.dashboard import with_scheme

REPLICA = "SERVE_REPLICA"


def enabled() -> bool:
    return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


def stats_url(dashboard: str) -> str:
    """HAProxy's stats page on the head node (Ray's default port unless set)."""
    host = urlsplit(with_scheme(dashboard)).hostname
    return f"http://{host}:{os.environ.get('RAY_SERVE_HAPROXY_STATS_PORT', '8404')}/stats;csv"


def replicas_up(dashboard: str) -> dict[str, int] | None:
    """Per application, how many of its replicas HAProxy routes to; None when the stats page
    cannot be read (no HAProxy there, or a cluster whose stats port is not reachable)."""
    try:
        page = httpx.get(stats_url(dashboard), timeout=5)
        page.raise_for_status()
    except httpx.HTTPError:
        return None
    return count_up(page.text)


def count_up(stats_csv: str) -> dict[str, int]:
    """Per application, its replicas that are UP in HAProxy's CSV stats (the backup proxy and
    replicas still DOWN do not count)."""
    up: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(stats_csv.lstrip("# "))):
        backend, server = row["pxname"], row["svname"]
        if backend.startswith("http-") and server.startswith(REPLICA):
            app = backend.removeprefix("http-")
            up[app] = up.get(app, 0) + (row["status"] == "UP")
    return up
