"""A config merged into what the cluster already runs, so that teams share a cluster.

Serve's REST deploy is declarative for the whole cluster: the applications it is sent are all
that run afterwards. `kiln serve b.yaml` therefore sends the running applications as they were
deployed (`deployed_app_config`), with b.yaml's added or updated:

    config = stamped(load_config(path), origin_of_file(path))
    deploy(merged_into(config, details(dashboard), replace=False), dashboard)

Each application records where it came from (`KILN_DEPLOYED_FROM`, "user@host:/path.yaml", in
its runtime_env, where `kiln serve status` reads it back). A name that runs already, from
another file and with another config, is refused unless `replace`; an identical application
is kept as it runs, untouched, and the index (every config may carry it) is joined to the one
that runs.
"""

import copy
import getpass
import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any

from kiln.errors import ServeError
from kiln.serve.config import INDEX_APP

ORIGIN = "KILN_DEPLOYED_FROM"


def origin_of_file(path: Path) -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}:{path.resolve()}"


def stamped(config: dict[str, Any], origin: str) -> dict[str, Any]:
    """The config with every application's origin recorded (a copy)."""
    config = copy.deepcopy(config)
    for app in config["applications"]:
        runtime_env = app.setdefault("runtime_env", {})
        runtime_env.setdefault("env_vars", {})[ORIGIN] = origin
    return config


def origin(app: dict[str, Any]) -> str | None:
    return ((app.get("runtime_env") or {}).get("env_vars") or {}).get(ORIGIN)


def running_apps(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each running application's config as it was deployed, by name."""
    return {
        name: app["deployed_app_config"]
        for name, app in details.get("applications", {}).items()
        if app.get("deployed_app_config")
    }


def merged_into(config: dict[str, Any], details: dict[str, Any], replace: bool) -> dict[str, Any]:
    """`config`'s applications added to the running ones, or updating those of its own files."""
    running = running_apps(details)
    ours = []
    for app in config["applications"]:
        before = running.pop(app["name"], None)
        if before is not None and same(before, app):
            ours.append(before)  # unchanged: no restart, its origin kept
            continue
        if before is not None and (index := joined_index(before, app)):
            ours.append(index)  # the cluster's index, with what this config adds to it
            continue
        if before is not None and origin(before) != origin(app) and not replace:
            raise ServeError(
                f"application {app['name']!r} already runs, deployed from "
                f"{origin(before) or 'elsewhere (not by kiln serve)'}; "
                "rename yours, or --replace to take it over"
            )
        ours.append(app)
    _check_routes(ours, list(running.values()))
    merged = {**config, "applications": [*running.values(), *ours]}
    _keep_grpc_services(merged, details)
    return merged


def origins(config: dict[str, Any]) -> set[str]:
    return {o for app in config["applications"] if (o := origin(app))}


def deployed_from(details: dict[str, Any], origins: set[str]) -> list[str]:
    """The running applications that these origins deployed."""
    return [name for name, app in running_apps(details).items() if origin(app) in origins]


def without(details: dict[str, Any], names: Collection[str]) -> dict[str, Any] | None:
    """The running config less the named applications (None when nothing else runs)."""
    running = running_apps(details)
    if missing := [n for n in names if n not in running]:
        raise ServeError(
            f"no application {missing[0]!r} runs; running: {', '.join(running) or 'none'}"
        )
    running = {name: app for name, app in running.items() if name not in names}
    if not running:
        return None
    config: dict[str, Any] = {"applications": list(running.values())}
    for option in ("proxy_location", "http_options", "grpc_options"):
        if details.get(option):
            config[option] = details[option]
    return config


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same application, wherever it was deployed from."""

    def bare(app: dict[str, Any]) -> dict[str, Any]:
        app = stamped({"applications": [app]}, "")["applications"][0]
        del app["runtime_env"]["env_vars"][ORIGIN]
        # Serve copies the config's logging_config into each application it reports.
        return {k: v for k, v in app.items() if v not in (None, {}, []) and k != "logging_config"}

    return bare(a) == bare(b)


def joined_index(before: dict[str, Any], app: dict[str, Any]) -> dict[str, Any] | None:
    """Two index applications of one name as one (None when either is not an index): the
    index is the cluster's, not a config's, so the first stands as it is, with the args the
    second sets that it does not (a gRPC gateway port); two different values of one arg are
    an error."""
    if not before["import_path"] == app["import_path"] == INDEX_APP:
        return None
    first, second = before.get("args") or {}, app.get("args") or {}
    for key in first.keys() & second.keys():
        if first[key] != second[key]:
            raise ServeError(
                f"application {app['name']!r} (the index) already has {key}: {first[key]!r}, "
                f"not {second[key]!r}; set the same value, or leave it out"
            )
    index = copy.deepcopy(before)
    index["args"] = {**first, **second}
    return index


def _check_routes(ours: list[dict[str, Any]], others: list[dict[str, Any]]) -> None:
    taken = {app.get("route_prefix"): app["name"] for app in others}
    for app in ours:
        if (route := app.get("route_prefix")) in taken and route is not None:
            raise ServeError(
                f"route {route} of {app['name']!r} is served by running application "
                f"{taken[route]!r}"
            )


def _keep_grpc_services(merged: dict[str, Any], details: dict[str, Any]) -> None:
    """The running gRPC services stay registered when a config without gRPC is added."""
    running = (details.get("grpc_options") or {}).get("grpc_servicer_functions") or []
    if not running:
        return
    options = merged.setdefault("grpc_options", dict(details["grpc_options"]))
    functions = options.setdefault("grpc_servicer_functions", [])
    functions.extend(f for f in running if f not in functions)
