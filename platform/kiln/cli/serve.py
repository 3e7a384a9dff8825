"""`kiln serve CONFIG | status | shutdown`: registered models behind Ray Serve endpoints.

kiln serve serving/digits.yaml               # local Ray; stays attached, Ctrl-C stops
kiln serve serving/digits.yaml --detach      # leaves it running (a `ray start` cluster)
kiln serve serving/digits.yaml --address http://head:8265
kiln serve status --json
"""

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from kiln.cli.output import commands, console, print_json
from kiln.errors import ServeError, SpecError
from kiln.settings import get_settings

METRICS_PORT = 8080


class ConfigOrCommand(TyperGroup):
    """`kiln serve FILE` runs the `up` command; `kiln serve status` the sub-command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["up", *args]
        return super().parse_args(ctx, args)


app = commands(
    "Serve registered models: kiln serve CONFIG | status | shutdown.", cls=ConfigOrCommand
)
STOP_GRACE_S = 20  # Serve's shutdown on a local `kiln serve up`: 5 s drain, then requests end
ADDRESS = typer.Option(
    None, "--address", help="Ray dashboard URL (http://HEAD:8265); default: a local Ray"
)


@app.command("up")
def up(
    config_paths: list[Path] = typer.Argument(
        ..., metavar="CONFIG...", help="serving/*.yaml files, deployed together"
    ),
    address: str | None = ADDRESS,
    detach: bool = typer.Option(False, "--detach", help="deploy and return"),
    port: int | None = typer.Option(None, "--port", help="HTTP port (default: the config's)"),
    grpc_port: int | None = typer.Option(
        None, "--grpc-port", help="gRPC port, where the config serves gRPC (default: the config's)"
    ),
    grpc_gateway_port: int | None = typer.Option(
        None,
        "--grpc-gateway-port",
        help="the gRPC port for calls without `application` metadata, where the config has one",
    ),
    only: list[str] = typer.Option([], "--only", help="serve only this model (repeatable)"),
    replace: bool = typer.Option(
        False, "--replace", help="take over applications of these names deployed from elsewhere"
    ),
    timeout: float = typer.Option(300, help="seconds to wait until every application runs"),
) -> None:
    """Deploy a serving config beside the cluster's other applications (adding or updating
    only its own), wait until it is healthy, print its URLs."""
    from kiln.serve.control import deploy, running

    configs = [
        running.stamped(
            deploy.load_config(
                path,
                port=port,
                only=only,
                grpc_port=grpc_port,
                grpc_gateway_port=grpc_gateway_port,
            ),
            running.origin_of_file(path),
        )
        for path in config_paths
    ]
    if unknown := set(only) - {name for c in configs for name in deploy.model_names(c)}:
        raise SpecError(f"no model application {sorted(unknown)[0]!r} in {config_paths[0]}")
    config = deploy.merge(configs)
    _warn_if_open(config)
    for advice in deploy.autoscaling_advice(config):
        console.print(f"[yellow]warning:[/yellow] {advice}")
    redis = _embedded_redis(config)
    started_here = False
    try:
        dashboard, started_here = _cluster(address, detach)
        whole = running.merged_into(config, deploy.details(dashboard), replace)
        console.print(f"deploying {' '.join(map(str, config_paths))} to {dashboard} ...")
        deploy.deploy(whole, dashboard)
        deploy.wait_until_running(config, dashboard, timeout)
    except BaseException:  # a failed deploy leaves nothing it started running in the background
        _stop_started(redis, detached_ray=detach and started_here)
        raise
    _print_urls(config)
    if detach:
        if address is None:
            _remember_detached(started_here=started_here, redis=redis)
        console.print(f"detached; stop with: kiln serve shutdown{_flag(address)}")
        if redis:
            console.print(f"the embedded Redis ({redis.url}) keeps running under KILN_HOME")
        return
    console.print("serving; Ctrl-C shuts down")
    # Ctrl-C, `kill` and Kubernetes stop it, even where a parent shell left SIGINT ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("shutting down ...")
        if started_here:
            _stop_local_ray()
        else:  # what this config deployed; others' applications stay
            mine = running.deployed_from(deploy.details(dashboard), running.origins(config))
            if mine:
                deploy.shutdown(dashboard, only=mine)
        if redis:
            redis.stop()  # saved to KILN_HOME/redis first


@app.command()
def status(
    address: str | None = ADDRESS,
    metrics: list[str] = typer.Option(
        [], "--metrics", help="a node's /metrics URL (default: every node of the local cluster)"
    ),
    window: float = typer.Option(2.0, min=0.5, help="seconds over which rates and percentiles run"),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Per deployment: replicas (running/target), queued and ongoing requests, requests per
    second, p50/p99 latency in the replicas, and the model version."""
    from kiln.serve.control import deploy, running
    from kiln.serve.control.status import DeploymentStats, deployment_stats, metrics_targets

    details = deploy.details(_dashboard(address))
    try:
        stats = deployment_stats(metrics_targets(metrics), window)
    except ServeError as e:
        console.print(f"[yellow]{escape(str(e))}[/yellow]")
        stats = {}
    rows = [
        {
            "application": name,
            "status": application["status"],
            "route": application.get("route_prefix"),
            "deployed_from": running.origin(application.get("deployed_app_config") or {}),
            "deployments": {
                d_name: {
                    "status": d["status"],
                    "replicas": len(deploy.running_replicas(d)),
                    "target": d.get("target_num_replicas"),
                    **stats.get((name, d_name), DeploymentStats()).to_json(),
                }
                for d_name, d in application.get("deployments", {}).items()
            },
        }
        for name, application in details.get("applications", {}).items()
    ]
    if json_output:
        print_json(rows)
        return
    columns = ["application", "deployment", "status", "replicas", "queued", "ongoing", "req/s"]
    table = Table(*columns, "p50 ms", "p99 ms", "version", title=f"over the last {window:g} s")
    for row in rows:
        for d_name, d in row["deployments"].items():
            table.add_row(
                row["application"],
                d_name,
                d["status"],
                f"{d['replicas']}/{d['target']}",
                *(_figure(d[k]) for k in ("queued", "ongoing", "rps", "p50_ms", "p99_ms")),
                str(d["version"] or "-"),
            )
    console.print(table if rows else "no applications are deployed")
    for row in rows:
        console.print(f"  {row['application']}: deployed from {row['deployed_from'] or '-'}")


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}" if value == int(value) else f"{value:.1f}"


@app.command()
def shutdown(
    address: str | None = ADDRESS,
    only: list[str] = typer.Option(
        [], "--only", help="delete only this application (repeatable); the others keep running"
    ),
) -> None:
    """Delete the Serve applications on the cluster (or `--only` some). After `kiln serve
    --detach` on this machine, also stop what it started: the local Ray and the embedded
    Redis (saved first)."""
    from kiln.serve.control import deploy

    dashboard = _dashboard(address)
    deploy.shutdown(dashboard, only=only, timeout_s=60)
    console.print(f"deleted {', '.join(only) or 'the Serve applications'} on {dashboard}")
    if address is None and not only:
        _stop_detached()


DETACHED = "serve-detached.json"  # under KILN_HOME: what `kiln serve --detach` started


def _remember_detached(started_here: bool, redis: Any) -> None:
    """Record what a detached `kiln serve` started, for `kiln serve shutdown` to stop."""
    path = Path(get_settings().home) / DETACHED
    known = json.loads(path.read_text()) if path.exists() else {}
    known["ray"] = known.get("ray", False) or started_here
    known["redis"] = known.get("redis", False) or redis is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known))


def _stop_started(redis: Any, detached_ray: bool) -> None:
    if detached_ray:
        from kiln.cluster.local import stop_detached_head

        stop_detached_head()
    if redis:
        redis.stop()


def _stop_detached() -> None:
    path = Path(get_settings().home) / DETACHED
    if not path.exists():
        return
    started = json.loads(path.read_text())
    if started.get("redis"):
        from kiln.features import EmbeddedRedis

        EmbeddedRedis(Path(get_settings().home).resolve() / "redis").stop()
        console.print("stopped the embedded Redis (saved under KILN_HOME)")
    if started.get("ray"):
        from kiln.cluster.local import stop_detached_head

        stop_detached_head()
        console.print("stopped the local Ray that kiln serve --detach started")
    path.unlink()


def _flag(address: str | None) -> str:
    return f" --address {address}" if address else ""


def _dashboard(address: str | None) -> str:
    from kiln.cluster.address import LOCAL_DASHBOARD, resolve_address

    return resolve_address(address, fallback=LOCAL_DASHBOARD)


def _cluster(address: str | None, detach: bool) -> tuple[str, bool]:
    """The dashboard to deploy to, and whether this process started the cluster (so that
    Ctrl-C stops it). Kiln starts a local Ray with the HAProxy ingress and Serve's
    throughput-optimised mode, which serve small models several times faster than Serve's
    Python proxy (README, Serving; tests/benchmarks/bench_serve.py)."""
    if address:
        return address, False
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")  # measured: +30% at c=32
    # A stopping replica behind HAProxy stays reachable for 30 s by default, for load balancers
    # in front of the cluster to deregister it; this one node has none, and 5 s let its own
    # HAProxy reload (0.5 s) before the replica refuses connections. Ctrl-C then takes seconds.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5")
    from kiln.cluster.address import LOCAL_DASHBOARD
    from kiln.cluster.local import start_detached_head

    if detach:
        return LOCAL_DASHBOARD, start_detached_head(METRICS_PORT)
    import ray

    from kiln.cluster.connect import connect

    # Whether connect started it: a cluster that KILN_RAY_ADDRESS names is not this process's,
    # and Ctrl-C must not shut down Serve there (every application on it).
    started = connect(get_settings().ray_address, metrics_export_port=METRICS_PORT)
    return "http://" + ray._private.worker.get_dashboard_url(), started


def _stop_local_ray() -> None:
    """Serve (its replicas finish their requests) and the local Ray this process started,
    through this process's own connection: not through the dashboard, since a Ctrl-C in the
    terminal reaches the dashboard's module processes too (Ray starts them in this process
    group) and the dashboard then takes requests it never answers. Serve's shutdown runs in a
    thread with a deadline: a signal to the whole process group may have stopped Ray already,
    and Serve would wait for it."""
    import threading

    import ray
    from ray import serve

    stopping = threading.Thread(target=serve.shutdown, daemon=True)
    stopping.start()
    stopping.join(STOP_GRACE_S)
    ray.shutdown()


def _embedded_redis(config: dict[str, Any]) -> Any:
    """Kiln's own Redis for recommendation apps that name none (and no KILN_REDIS_URL)."""
    from kiln.serve.control import deploy

    if not deploy.needs_redis(config):
        return None
    if url := get_settings().redis_url:  # the replicas may not share this environment
        deploy.use_redis(config, url)
        return None
    from kiln.features import EmbeddedRedis

    server = EmbeddedRedis(Path(get_settings().home).resolve() / "redis")
    started = not server.running()
    server.start()
    deploy.use_redis(config, server.url)
    console.print(f"feature cache: embedded Redis at {server.url} (data in {server.directory})")
    return server if started else None


def _warn_if_open(config: dict[str, Any]) -> None:
    settings = get_settings()
    files = [a.get("args", {}).get("api_keys_file") for a in config["applications"]]
    if not (settings.api_keys or settings.api_keys_file or any(files)):
        console.print(
            "[yellow]warning:[/yellow] no API keys (KILN_API_KEYS or api_keys_file): "
            "the model endpoints are open to anyone who can reach them"
        )


def _print_urls(config: dict[str, Any]) -> None:
    from kiln.serve.control import deploy

    port = config.get("http_options", {}).get("port", 8000)
    base = f"http://127.0.0.1:{port}"
    for application in config["applications"]:
        console.print(f"  {application['name']:<14} {base}{application['route_prefix']}")
    console.print(f"  docs           {base}/docs")
    if deploy.serves_kserve_v1(config):
        console.print(f"  KServe V1      {base}/v1/models/NAME:predict")
    if grpc := config.get("grpc_options", {}).get("grpc_servicer_functions"):
        grpc_port = config["grpc_options"].get("port", 9000)
        console.print(
            f"  gRPC           127.0.0.1:{grpc_port} ({len(grpc)} service; "
            "name the model in each call's `application` metadata)"
        )
    for gateway in deploy.grpc_gateway_ports(config):
        console.print(f"  gRPC gateway   127.0.0.1:{gateway} (the model each message names)")
    console.print(f"  metrics        http://127.0.0.1:{METRICS_PORT}/metrics (Prometheus)")
