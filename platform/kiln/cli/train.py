"""`kiln train SPEC`: run a job spec on Ray Train and register the model."""

from pathlib import Path

import typer
from rich.table import Table

from kiln.cli.output import console, number, print_json, stdout_for_json_only


def train(
    spec_file: Path = typer.Argument(..., help="the job spec (YAML)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: PATH=VALUE"),
    address: str = typer.Option(
        None,
        help="an existing Ray cluster's GCS, HOST:6379 (default: KILN_RAY_ADDRESS, else the "
        "cluster `kiln up` or `ray start` runs on this machine, else a new local one)",
    ),
    run_name: str = typer.Option(None, help="resume this run, or give a new run this name"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
    verbose: bool = typer.Option(False, "--verbose", help="show Ray's worker logs"),
    dashboard: bool = typer.Option(
        False, "--dashboard", help="start Ray's dashboard with the local cluster (a second slower)"
    ),
) -> None:
    """Train a job spec on Ray Train and register the best checkpoint as a new version."""
    from kiln import data as datasets
    from kiln.validate import load_spec

    spec = load_spec(spec_file, set_)  # every spec error surfaces here, before Ray starts
    from kiln.cluster.connect import connect
    from kiln.cluster.preflight import check_cluster_started_here

    preload = ["kiln.train.runner", *datasets.imports(spec.data)]  # imported while Ray starts
    show_logs = verbose and not json_output
    if connect(address, show_logs, dashboard=dashboard, preload=preload):
        check_cluster_started_here(spec)
    from kiln.train import run_job  # imported while Ray started (preload)
    from kiln.train.progress import ProgressView

    metric = spec.checkpoint.metric or "val_loss"
    view = ProgressView(spec.name, spec.train.epochs, metric, console, quiet=quiet or json_output)
    with stdout_for_json_only(json_output):
        outcome = run_job(spec, view, run_name=run_name)
    if json_output:
        print_json(outcome.to_json())
    elif not quiet:
        _summary(outcome)


def _summary(outcome) -> None:
    registered = outcome.version is not None
    title = f"{outcome.model} v{outcome.version}" if registered else outcome.run_name
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(outcome.metrics.items()):
        if key.startswith(("val_", "train_")) or key == "epoch":
            table.add_row(key, number(value))
    for key, value in sorted(outcome.baselines.items()):
        table.add_row(f"{key} (baseline)", number(value))
    console.print(table)
    if not registered:  # the spec's `register: null`
        console.print(f"not registered (register: null); run {outcome.run_path}")
        return
    alias = f" as {outcome.model}@{outcome.alias}" if outcome.alias else ""
    console.print(
        f"registered [bold]{outcome.model}@{outcome.version}[/bold]{alias}; run {outcome.run_path}"
    )
