"""Deploying a serving config the way `serve deploy` and KubeRay do (the dashboard's REST API,
declarative: the config is the whole wanted state), after checking what Ray would only find
out inside a replica: the models exist, arguments are known, routes match the model names.

    config = load_config(Path("serving/digits.yaml"))
    deploy(config, "http://127.0.0.1:8265"); wait_until_running(config, "http://127.0.0.1:8265")
"""

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kiln.cluster.dashboard import describe, first_line, open_client, with_scheme
from kiln.errors import ModelNotFoundError, ServeError, SpecError
from kiln.registry import ModelRegistry
from kiln.serve.config import (
    INDEX_APP,
    MODEL_DEPLOYMENT,
    MODEL_ROUTE,
    RECOMMEND_DEPLOYMENT,
    IndexArgs,
    ModelArgs,
    ModelUserConfig,
    RecommendArgs,
    RecommendUserConfig,
)
from kiln.serve.control import ingress, running
from kiln.settings import absolute
from kiln.spec import first_error, read_yaml

MODEL_APP = "kiln.serve:model_app"
RECOMMEND_APP = "kiln.serve:recommend_app"
M = TypeVar("M", bound=BaseModel)
U = TypeVar("U", ModelUserConfig, RecommendUserConfig)


def load_config(
    path: Path,
    registry: str | None = None,
    port: int | None = None,
    only: Collection[str] = (),
    grpc_port: int | None = None,
    grpc_gateway_port: int | None = None,
) -> dict[str, Any]:
    """The config as Ray will receive it: checked, with the registry URI filled in (`port`,
    `grpc_port` and `grpc_gateway_port` replace the file's ports). `only`
    keeps the named model applications (and the others: index, recommendations) and drops the
    other model applications."""
    source = str(path)
    raw = read_config(path)
    if port is not None:
        raw.setdefault("http_options", {})["port"] = port
    if grpc_port is not None and "grpc_options" in raw:
        raw["grpc_options"]["port"] = grpc_port
    if grpc_gateway_port is not None:
        for app in raw["applications"]:
            if app["import_path"] == INDEX_APP and "grpc_gateway_port" in (app.get("args") or {}):
                app["args"]["grpc_gateway_port"] = grpc_gateway_port
    if only:
        _keep(raw, only)
    for index, app in enumerate(raw["applications"]):
        where = f"{source}: applications[{index}]"
        try:
            _check_app(app, where, registry, raw)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"{where} ({app['name']}): {e}") from None
    return raw


def _check_app(
    app: dict[str, Any], where: str, registry: str | None, config: dict[str, Any]
) -> None:
    if app["import_path"] == MODEL_APP:
        _check_model_app(app, where, registry)
    elif app["import_path"] == RECOMMEND_APP:
        _check_recommend_app(app, where, registry)
    elif app["import_path"] == INDEX_APP:
        _check_index_app(app, where, config)


def read_config(path: Path) -> dict[str, Any]:
    """The file as written, once it is a valid Ray Serve config (what `serve deploy` takes)."""
    from ray.serve.schema import ServeDeploySchema

    raw = read_yaml(path, str(path))
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as e:
        raise SpecError(first_error(e, str(path))) from None
    return raw


def _check_recommend_app(app: dict[str, Any], where: str, registry: str | None) -> None:
    args = _checked(RecommendArgs, app.get("args") or {}, where, "args")
    models = _fill_registry(app, args.registry, registry)
    _live_configs(app, where, models.resolve(args.model).name, models, RecommendUserConfig)


def _check_index_app(app: dict[str, Any], where: str, config: dict[str, Any]) -> None:
    port = _checked(IndexArgs, app.get("args") or {}, where, "args").grpc_gateway_port
    if port is None:
        return
    grpc_options = config.get("grpc_options") or {}
    if not grpc_options.get("grpc_servicer_functions"):
        raise SpecError(
            f"{where}: args.grpc_gateway_port relays to Serve's gRPC ingress: the config "
            "needs grpc_options with its grpc_servicer_functions"
        )
    taken = {(config.get("http_options") or {}).get("port", 8000), grpc_options.get("port", 9000)}
    if port in taken:
        raise SpecError(f"{where}: args.grpc_gateway_port {port} is the config's HTTP or gRPC port")


def grpc_gateway_ports(config: dict[str, Any]) -> list[int]:
    """The ports where the config's index applications relay gRPC calls by model name."""
    args = [a.get("args") or {} for a in config["applications"] if a["import_path"] == INDEX_APP]
    return [a["grpc_gateway_port"] for a in args if a.get("grpc_gateway_port")]


def serves_kserve_v1(config: dict[str, Any]) -> bool:
    """Whether /v1/models/... reaches the index (which relays KServe V1 to the models): an
    index at / and no application whose prefix takes those paths first (/v1, /v1/models)."""
    prefixes = {a.get("route_prefix") for a in config["applications"]}
    index = any(
        a["import_path"] == INDEX_APP and a.get("route_prefix") == "/"
        for a in config["applications"]
    )
    return index and not prefixes & {"/v1", "/v1/models"}


def needs_redis(config: dict[str, Any]) -> bool:
    """Whether a recommendation app has no Redis of its own (KILN_REDIS_URL or redis_url)."""
    return any(
        a["import_path"] == RECOMMEND_APP and not a.get("args", {}).get("redis_url")
        for a in config["applications"]
    )


def use_redis(config: dict[str, Any], url: str) -> None:
    for app in config["applications"]:
        if app["import_path"] == RECOMMEND_APP:
            app.setdefault("args", {}).setdefault("redis_url", url)


def merge(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several configs deployed together (a deploy replaces every application on the cluster):
    the first config's options (and gRPC's of the first that has them), every application
    once; the index, which each config may carry, joined (`running.joined_index`)."""
    merged = {**configs[0], "applications": []}
    if grpc := next((c["grpc_options"] for c in configs if c.get("grpc_options")), None):
        merged["grpc_options"] = grpc  # one config serves gRPC: the merged one does
    by_name: dict[str, dict[str, Any]] = {}
    for app in (a for c in configs for a in c["applications"]):
        first = by_name.get(app["name"])
        if first is None:
            by_name[app["name"]] = app
        elif index := running.joined_index(first, app):
            by_name[app["name"]] = index
        elif not running.same(first, app):
            raise SpecError(f"two different applications are named {app['name']!r}")
    merged["applications"] = list(by_name.values())
    return merged


def _keep(raw: dict[str, Any], names: Collection[str]) -> None:
    raw["applications"] = [
        a for a in raw["applications"] if a["import_path"] != MODEL_APP or a["name"] in names
    ]


def _check_model_app(app: dict[str, Any], where: str, registry: str | None) -> None:
    args = _checked(ModelArgs, app.get("args") or {}, where, "args")
    if app.get("route_prefix") != MODEL_ROUTE + app["name"]:
        raise SpecError(f"{where}: route_prefix must be {MODEL_ROUTE}{app['name']} (its name)")
    models = _fill_registry(app, args.registry, registry)
    name = models.resolve(args.model).name
    for live in _live_configs(app, where, name, models, ModelUserConfig):
        shadow = live.traffic.shadow if live.traffic else None
        if shadow and shadow.application == app["name"]:
            raise SpecError(f"{where}: traffic.shadow must name another application")


def _fill_registry(app: dict[str, Any], given: str | None, default: str | None) -> ModelRegistry:
    """The app's registry as an absolute URI in its args (replicas may run with another cwd
    and environment); resolving a model there raises ModelNotFoundError naming what is missing."""
    uri = absolute(given) if given else ModelRegistry.open(default).uri
    app.setdefault("args", {})["registry"] = uri
    return ModelRegistry.open(uri)


def _checked(schema: type[M], value: dict[str, Any], where: str, prefix: str) -> M:
    try:
        return schema.model_validate(value)
    except ValidationError as e:
        raise SpecError(first_error(e, where, schema, prefix=prefix)) from None


def _live_configs(
    app: dict[str, Any], where: str, name: str, models: ModelRegistry, schema: type[U]
) -> list[U]:
    """The user_config of each of the app's Kiln deployments, checked; every arm of its
    rollout is a version of the model `name` (ModelNotFoundError names the missing one)."""
    lives = []
    for deployment in app.get("deployments", []):
        if deployment["name"] in (MODEL_DEPLOYMENT, RECOMMEND_DEPLOYMENT):
            live = _check_user_config(deployment, where, schema)
            for arm in live.traffic.split or {} if live.traffic else ():
                models.resolve(f"{name}@{arm}")
            lives.append(live)
    return lives


def _check_user_config(deployment: dict[str, Any], where: str, schema: type[U]) -> U:
    live = _checked(schema, deployment.get("user_config") or {}, where, "user_config")
    ongoing = deployment.get("max_ongoing_requests", 32)
    if ongoing < live.max_batch_size:  # Serve never fills a batch past this
        raise SpecError(
            f"{where}: max_ongoing_requests ({ongoing}) must be at least "
            f"max_batch_size ({live.max_batch_size})"
        )
    return live


def autoscaling_advice(config: dict[str, Any]) -> list[str]:
    """Model deployments whose autoscaling target is below their batch size: Serve adds a
    replica before a batch can fill, which split digits-cnn's batches and halved its
    throughput in `make bench` (autoscale). A warning, not an error: it may be meant."""
    advice = []
    for app in config["applications"]:
        for deployment in app.get("deployments", []) if app["import_path"] == MODEL_APP else []:
            batch = (deployment.get("user_config") or {}).get("max_batch_size")
            target = (deployment.get("autoscaling_config") or {}).get("target_ongoing_requests")
            if batch and target and target < batch:
                advice.append(
                    f"{app['name']}: target_ongoing_requests ({target}) is below max_batch_size "
                    f"({batch}); replicas are added before batches fill"
                )
    return advice


def model_names(config: dict[str, Any]) -> list[str]:
    return [a["name"] for a in config["applications"] if a["import_path"] == MODEL_APP]


def deploy(config: dict[str, Any], dashboard: str) -> None:
    _call(dashboard, "deploy_applications", config)


def details(dashboard: str) -> dict[str, Any]:
    """Serve's view of its applications (ServeInstanceDetails as JSON)."""
    return dict(_call(dashboard, "get_serve_details"))


def wait_until_running(config: dict[str, Any], dashboard: str, timeout_s: float = 300) -> None:
    """Until every application is RUNNING, a proxy (Serve's, or its HAProxy) takes requests
    and, under the HAProxy ingress, routes them to the replicas (see kiln.serve.control.ingress);
    a DEPLOY_FAILED application raises with Serve's reason."""
    names = {a["name"] for a in config["applications"]}
    deadline = time.monotonic() + timeout_s
    while True:
        serve = details(dashboard)
        apps = serve.get("applications", {})
        states = {n: apps.get(n, {}).get("status", "NOT_STARTED") for n in names}
        if failed := [n for n, s in states.items() if s == "DEPLOY_FAILED"]:
            raise ServeError(f"{failed[0]} failed to deploy: {why_failed(apps[failed[0]])}")
        waiting = [f"{n} ({s})" for n, s in states.items() if s != "RUNNING"]
        if not waiting:
            waiting = proxy_not_ready(serve) or _not_routed(names, apps, dashboard)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise ServeError(f"not running after {timeout_s:.0f} s: {', '.join(waiting)}")
        time.sleep(1)


def proxy_not_ready(serve: dict[str, Any]) -> list[str]:
    """Why no request gets in yet, if none does: applications turn RUNNING before the proxy
    that a new Serve instance starts (after `kiln serve shutdown`, HAProxy took seconds more
    to listen; requests in between were refused). The proxy's status is the controller's,
    read like the rest through the dashboard, so this holds where the HTTP port is not
    reachable from here. One healthy proxy is enough: a node's proxy that never starts must
    not hold a deploy that others serve."""
    if serve.get("proxy_location") == "Disabled":
        return []
    statuses = [p.get("status") for p in serve.get("proxies", {}).values()]
    if "HEALTHY" in statuses:
        return []
    return [f"the HTTP proxy ({', '.join(statuses) or 'not started'})"]


def why_failed(app: dict[str, Any]) -> str:
    """The error a failed deployment's replicas raised (Serve's application message says
    only which deployments failed), with what to do where a replica cannot import a module."""
    messages = [
        d["message"]
        for d in app.get("deployments", {}).values()
        if d.get("status") == "DEPLOY_FAILED" and d.get("message")
    ]
    reason = first_line(RuntimeError(messages[0] if messages else app.get("message", "")))
    if "No module named" in reason:
        reason += (
            " (the replicas import it: install its package where they run, or give the "
            'application runtime_env: {working_dir: "local:///its/folder"}, or an s3:// zip)'
        )
    return reason


def _not_routed(names: set[str], apps: dict[str, Any], dashboard: str) -> list[str]:
    """The applications with a running replica that HAProxy does not route to yet; none where
    there is no HAProxy or its stats page cannot be read."""
    if not ingress.enabled() or (up := ingress.replicas_up(dashboard)) is None:
        return []
    unrouted = [n for n in names if _has_running_replica(apps[n]) and not up.get(n)]
    return [f"HAProxy routes no request to a replica of {n}" for n in sorted(unrouted)]


def _has_running_replica(app: dict[str, Any]) -> bool:
    return any(running_replicas(d) for d in app.get("deployments", {}).values())


def running_replicas(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """A deployment's RUNNING replicas, from its entry in `details`."""
    return [r for r in deployment.get("replicas", []) if r.get("state") == "RUNNING"]


def shutdown(dashboard: str, only: Collection[str] = (), timeout_s: float = 0) -> None:
    """Delete every application, or only those named (the others keep running); with a
    timeout, wait until they are gone (their replicas stopped)."""
    rest = running.without(details(dashboard), only) if only else None
    if rest is None:
        _call(dashboard, "delete_applications")
    else:
        deploy(rest, dashboard)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = details(dashboard).get("applications", {})
        if not (set(apps) & set(only) if only else apps):
            return
        time.sleep(0.5)


def _client(dashboard: str) -> Any:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return open_client(ServeSubmissionClient, with_scheme(dashboard))


def _call(dashboard: str, method: str, *args: Any) -> Any:
    client = _client(dashboard)
    try:
        return getattr(client, method)(*args)
    except Exception as e:
        why = describe(e, dashboard)
        raise ServeError(f"Ray Serve at {dashboard}: {method} failed: {why}") from None
