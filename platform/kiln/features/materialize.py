"""Bulk materialisation: users' recent histories from an interactions table into Redis.

history_len, frame = interactions_for("recsys-two-tower@production")   # or a file
write_histories(store, recent_histories(frame, history_len))
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.features.store import FeatureStore

BATCH = 1000  # users per pipelined round trip


def interactions_for(
    model: str, path: Path | None = None, before_reading: Callable[[], object] = lambda: None
) -> tuple[int, Any]:
    """The model's history length, and the interactions: the file (read with the columns
    and CSV dialect the model was trained with), else the data the model was trained on
    (its registered spec: a file or the synthetic generator). `before_reading` runs before
    a file is read (through Ray Data): the CLI starts Ray there, not for generated data."""
    import yaml

    from kiln.data.interactions import Synthetic, read_interactions, synthetic_interactions
    from kiln.data.shards import CsvDialect
    from kiln.registry import ModelRegistry
    from kiln.spec import parse_spec

    registry = ModelRegistry.open()
    version = registry.resolve(model)
    card = registry.read_json(version, "model.json")
    history_len = int(card["schema"]["transform"]["history_len"])
    spec = parse_spec(yaml.safe_load(registry.read(version, "spec.yaml")), version.ref)
    params = spec.data.params
    user, item, time = (params.get(f"{c}_column") for c in ("user", "item", "time"))
    csv = CsvDialect.model_validate(params.get("csv", {}))
    if source := path or spec.data.path or params.get("path"):
        before_reading()
        return history_len, read_interactions(str(source), user, item, time, csv)
    synthetic = Synthetic.model_validate(params.get("synthetic", {}))
    return history_len, synthetic_interactions(synthetic, spec.data.seed)


def recent_histories(frame: Any, history_len: int) -> dict[str, list[tuple[str, float]]]:
    """Each user's newest `history_len` (item, time) pairs, oldest first, as source ids; a
    time written as a date is its unix time, as the feature store keeps them."""
    from kiln.data.histories import timed

    frame = timed(frame).sort_values(["user", "time"], kind="stable")
    recent = frame.groupby("user").tail(history_len)
    return {
        str(user): [(str(i), float(t)) for i, t in zip(group["item"], group["time"], strict=True)]
        for user, group in recent.groupby("user", sort=False)
    }


def write_histories(
    store: FeatureStore,
    histories: dict[str, list[tuple[str, float]]],
    on_batch: Callable[[int], None] = lambda users: None,
) -> None:
    """Replace each user's history, BATCH users per round trip; `on_batch(n)` after each."""
    users = list(histories)
    for start in range(0, len(users), BATCH):
        chunk = users[start : start + BATCH]
        store.replace_histories({u: histories[u] for u in chunk})
        on_batch(len(chunk))
