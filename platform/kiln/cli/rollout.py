"""`kiln rollout status|promote|abort MODEL`: read a running experiment's arms and end it.

An experiment's arms are aliases of one model (serving config: user_config.traffic.split), so
ending it is a registry write that every replica follows: promote points the control alias at
the candidate's version, abort points the candidate alias back at the control's version.
"""

import typer
from rich.table import Table

from kiln.cli.output import commands, console, number, print_json

app = commands("Rollouts: per-arm figures and a significance test; end one.")
JSON = typer.Option(False, "--json")
CONTROL = typer.Option("production", "--control", help="the arm the others are compared with")
CANDIDATE = typer.Option("candidate", "--candidate", help="the arm under test")


@app.command()
def status(
    model: str = typer.Argument(
        help="the endpoint: a model application's name, or a recommendation app's (recommend)"
    ),
    control: str = CONTROL,
    metrics: list[str] = typer.Option(
        [], "--metrics", help="a node's /metrics URL (default: every node of the local cluster)"
    ),
    alpha: float = typer.Option(0.05, min=0.0001, max=0.5, help="significance level"),
    json_output: bool = JSON,
) -> None:
    """Per arm since its replicas started: requests, errors, p50/p99, labelled feedback and
    click-through with 95% intervals; each arm against the control (two-sided two-proportion
    z-test)."""
    from kiln.serve.control import experiment
    from kiln.serve.control.status import metrics_targets, scrape

    arms = experiment.arms_of(scrape(metrics_targets(metrics)), model)
    comparisons = experiment.compare(arms, control, alpha)
    if json_output:
        print_json(experiment.report(arms, comparisons))
        return
    if not arms:
        console.print(f"{model}: no rollout has answered yet (no arm in the metrics)")
        return
    table = Table(
        "arm", "requests", "errors", "p50 ms", "p99 ms", "feedback", "accuracy (95%)",
        "conversions", "click-through (95%)",
    )  # fmt: skip
    for arm in arms.values():
        table.add_row(
            arm.name,
            str(arm.requests),
            str(arm.errors),
            number(arm.p50_ms),
            number(arm.p99_ms),
            str(arm.accuracy.trials),
            _rate(arm.accuracy),
            str(arm.conversions),
            _rate(arm.click_through) if arm.conversions else "-",
        )
    console.print(table)
    for c in comparisons:
        verdict = "significant" if c.significant else "not significant"
        console.print(
            f"{c.arm} vs {c.against}: {c.metric} {c.difference:+.4f}, "
            f"p = {c.p_value:.4g} ({verdict} at {alpha:g})"
        )


def _rate(proportion) -> str:
    interval = proportion.interval()
    if interval is None:
        return "-"
    return f"{proportion.rate:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


@app.command()
def promote(
    model: str, control: str = CONTROL, candidate: str = CANDIDATE, json_output: bool = JSON
) -> None:
    """End the experiment for the candidate: the control alias moves to its version (MODEL:
    the registered model, e.g. recsys-two-tower for the recommend endpoint)."""
    _move(model, control, candidate, json_output)


@app.command()
def abort(
    model: str, control: str = CONTROL, candidate: str = CANDIDATE, json_output: bool = JSON
) -> None:
    """End the experiment for the control: the candidate alias moves back to its version."""
    _move(model, candidate, control, json_output)


def _move(model: str, alias: str, to_alias: str, json_output: bool) -> None:
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open()
    version = registry.resolve(f"{model}@{to_alias}").version
    registry.promote(model, version, alias)
    if json_output:
        print_json({"name": model, "alias": alias, "version": version})
    else:
        console.print(f"{model}@{alias} → version {version} (was {to_alias}'s)")
