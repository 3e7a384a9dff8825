"""`kiln features load | stats`: the Redis feature cache from the terminal.

kiln features load ratings.csv --model recsys-two-tower@production
kiln features load --model recsys-two-tower@production    # the data it was trained on
kiln features stats
"""

from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress

from kiln.cli.output import console, print_json

app = typer.Typer(help="The online feature cache (Redis).", no_args_is_help=True)
MODEL = typer.Option(..., "--model", help="the recommender the features are for (NAME@TAG)")
NAMESPACE = typer.Option("kiln", "--namespace", help="key prefix, as in the serving config")
BATCH = 1000


@app.command()
def load(
    path: Path | None = typer.Argument(None, help="interactions CSV/Parquet (user, item, time)"),
    model: str = MODEL,
    namespace: str = NAMESPACE,
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Write users' recent histories into Redis, in pipelined batches; idempotent."""
    from kiln.features import FeatureStore, connect, redis_for_kiln

    history_len, frame = _interactions(model, path)
    histories = _recent_histories(frame, history_len)
    users = list(histories)
    with redis_for_kiln() as url:
        store = FeatureStore(connect(url, timeout_s=10), history_len, namespace)
        with Progress(console=console, transient=json_output, disable=json_output) as progress:
            task = progress.add_task("loading histories", total=len(users))
            for start in range(0, len(users), BATCH):
                chunk = users[start : start + BATCH]
                store.replace_histories({u: histories[u] for u in chunk})
                progress.advance(task, len(chunk))
    summary = {"users": len(users), "interactions": len(frame), "history_len": history_len}
    if json_output:
        print_json(summary)
    else:
        console.print(
            f"loaded {summary['users']} users' histories ({summary['interactions']} interactions, "
            f"the newest {history_len} each) into {url}"
        )


@app.command()
def stats(
    model: str | None = typer.Option(None, "--model", help="history length from this model"),
    namespace: str = NAMESPACE,
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Users, histories and cached vectors (per model version) in Redis, and its memory."""
    from kiln.features import FeatureStore, connect, redis_for_kiln

    with redis_for_kiln() as url:
        figures = FeatureStore(connect(url, timeout_s=10), 0, namespace).stats()
    if json_output:
        print_json(figures)
        return
    for key, value in figures.items():
        console.print(f"{key:<20} {value}")


def _interactions(model: str, path: Path | None) -> tuple[int, Any]:
    """The model's history length, and the interactions: the file, else the model's data."""
    import yaml

    from kiln.data.interactions import Synthetic, read_interactions, synthetic_interactions
    from kiln.registry import ModelRegistry
    from kiln.spec import parse_spec

    registry = ModelRegistry.open()
    version = registry.resolve(model)
    history_len = int(
        registry.read_json(version, "model.json")["schema"]["transform"]["history_len"]
    )
    if path is not None:
        return history_len, read_interactions(str(path), None, None, None)
    spec = parse_spec(yaml.safe_load(registry.read(version, "spec.yaml")), version.ref)
    params = spec.data.params
    if spec.data.path or params.get("path"):
        source = spec.data.path or params["path"]
        return history_len, read_interactions(
            source, params.get("user_column"), params.get("item_column"), params.get("time_column")
        )
    synthetic = Synthetic.model_validate(params.get("synthetic", {}))
    return history_len, synthetic_interactions(synthetic, spec.data.seed)


def _recent_histories(frame: Any, history_len: int) -> dict[str, list[tuple[str, float]]]:
    recent = frame.sort_values(["user", "time"], kind="stable").groupby("user").tail(history_len)
    return {
        str(user): [(str(i), float(t)) for i, t in zip(group["item"], group["time"], strict=True)]
        for user, group in recent.groupby("user", sort=False)
    }
