"""`kiln up` / `kiln down`: a local multi-node Ray cluster for development."""

import typer
from rich.table import Table

from kiln.cli.output import console, print_json


def up(
    workers: int = typer.Option(2, min=0, help="worker nodes beside the head"),
    cpus_per_worker: float = typer.Option(1, min=0, help="CPUs each worker node offers"),
    head_cpus: float = typer.Option(0, min=0, help="CPUs the head offers (0: it only coordinates)"),
    port: int = typer.Option(6379, help="the head's GCS port"),
    dashboard_port: int = typer.Option(8265, help="the dashboard (Jobs, Serve and State APIs)"),
    object_store_mb: int = typer.Option(512, min=64, help="object store of each node, MiB"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Start a head and worker nodes on this machine, each a separate Ray node process."""
    from kiln.cluster import local

    cluster = local.up(workers, cpus_per_worker, head_cpus, port, dashboard_port, object_store_mb)
    if json_output:
        print_json(cluster.to_json())
        return
    auth = "on" if cluster.token_auth else "off (set RAY_AUTH_MODE=token to turn it on)"
    console.print(f"Ray cluster up: {len(cluster.nodes)} nodes, token auth {auth}")
    console.print(
        f"  dashboard  {cluster.dashboard}   kiln submit / kiln jobs / kiln serve --address"
    )
    console.print(f"  address    {cluster.address}   ray.init / RAY_ADDRESS")
    table = Table("node", "pid", "CPUs", "metrics port", "log")
    for node in cluster.nodes:
        table.add_row(node.name, str(node.pid), f"{node.cpus:g}", str(node.metrics_port), node.log)
    console.print(table)
    console.print("stop it with `kiln down`")


def down(
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Stop the cluster `kiln up` started (only its processes)."""
    from kiln.cluster import local

    cluster = local.down()
    if json_output:
        print_json(cluster.to_json() if cluster else None)
    elif cluster is None:
        console.print("no cluster started by kiln up")
    else:
        console.print(f"stopped {len(cluster.nodes)} nodes ({cluster.dashboard})")
