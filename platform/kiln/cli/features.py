"""`kiln features load | stats`: the Redis feature cache from the terminal.

kiln features load ratings.csv --model recsys-two-tower@production
kiln features load --model recsys-two-tower@production    # the data it was trained on
kiln features stats
"""

from pathlib import Path

import typer
from rich.progress import Progress

from kiln.cli.output import commands, console, print_json

app = commands("The online feature cache (Redis).")
MODEL = typer.Option(..., "--model", help="the recommender the features are for (NAME@TAG)")
NAMESPACE = typer.Option("kiln", "--namespace", help="key prefix, as in the serving config")


@app.command()
def load(
    path: Path | None = typer.Argument(None, help="interactions CSV/Parquet (user, item, time)"),
    model: str = MODEL,
    namespace: str = NAMESPACE,
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Write users' recent histories into Redis, in pipelined batches; idempotent."""
    from kiln.cluster.connect import connect as connect_ray
    from kiln.features import FeatureStore, connect, redis_for_kiln
    from kiln.features.materialize import interactions_for, recent_histories, write_histories

    # files are read through Ray Data, as in training; generated data need no Ray
    history_len, frame = interactions_for(model, path, lambda: connect_ray(dashboard=False))
    histories = recent_histories(frame, history_len)
    with redis_for_kiln() as url:
        store = FeatureStore(connect(url, timeout_s=10), history_len, namespace)
        with Progress(console=console, transient=json_output, disable=json_output) as progress:
            task = progress.add_task("loading histories", total=len(histories))
            write_histories(store, histories, lambda n: progress.advance(task, n))
    summary = {"users": len(histories), "interactions": len(frame), "history_len": history_len}
    if json_output:
        print_json(summary)
    else:
        console.print(
            f"loaded {summary['users']} users' histories ({summary['interactions']} interactions, "
            f"the newest {history_len} each) into {url}"
        )


@app.command()
def stats(
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
