"""`kiln tune SPEC`: search hyperparameters on Ray Tune and register the best trial."""

from pathlib import Path

import typer

from kiln.cli.output import console, print_json, stdout_for_json_only


def tune(
    spec_file: Path = typer.Argument(..., help="a job spec with a `tune` section"),
    set_: list[str] = typer.Option([], "--set", help="override a field: PATH=VALUE"),
    resume: bool = typer.Option(False, "--resume", help="continue the latest interrupted search"),
    name: str = typer.Option(None, help="the search's name (default: job name and time)"),
    address: str = typer.Option(
        None,
        help="an existing Ray cluster's GCS, HOST:6379 (default: KILN_RAY_ADDRESS, else the "
        "cluster `kiln up` or `ray start` runs on this machine, else a new local one)",
    ),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
    verbose: bool = typer.Option(False, "--verbose", help="show Ray's worker logs"),
) -> None:
    """Search a job's `tune.space` with Ray Tune; each trial is a Ray Train run."""
    from kiln import data as datasets
    from kiln.validate import load_spec

    spec = load_spec(spec_file, set_)  # bad spaces fail here, before Ray starts
    from kiln.cluster.connect import connect
    from kiln.cluster.preflight import check_cluster_started_here

    preload = ["kiln.tune.search", *datasets.imports(spec.data)]  # imported while Ray starts
    if connect(address, show_logs=verbose and not json_output, preload=preload):
        check_cluster_started_here(spec)
    from kiln.tune import run_search  # imported while Ray started (preload)

    with stdout_for_json_only(json_output):
        outcome = run_search(spec, quiet=quiet or json_output, resume=resume, name=name)
    if json_output:
        print_json(outcome.to_json())
        return
    if not quiet:
        config = ", ".join(f"{k}={v}" for k, v in outcome.best_config.items())
        console.print(f"best trial {outcome.best_trial}: {outcome.best_metric:.4f} with {config}")
        console.print(f"results: {outcome.path}/results.csv, curves: {outcome.path}/curves.png")
        if outcome.model:
            console.print(f"registered [bold]{outcome.model.model}@{outcome.model.version}[/bold]")
