"""Registering a finished run: weights, card, resolved spec, metrics, curves and lineage."""

import io
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from kiln import plots, retrieval, tasks
from kiln.data import Dataset, StreamedDataset
from kiln.idmaps import IdMap
from kiln.registry.card import model_card
from kiln.registry.loading import build_from_card
from kiln.registry.store import REFERENCE, WEIGHTS, ModelRegistry, ModelVersion, json_bytes
from kiln.settings import get_settings
from kiln.spec import JobSpec, spec_to_yaml
from kiln.train.session import ARTIFACTS, MODEL_FILE

REFERENCE_ROWS, REFERENCE_BYTES = 2000, 8 * 2**20


def publish(
    spec: JobSpec,
    dataset: Dataset | StreamedDataset,
    checkpoint: ray.train.Checkpoint,
    outcome,
    extra_files: dict[str, bytes] | None = None,
    extra_lineage: dict[str, Any] | None = None,
) -> tuple[ModelVersion, str | None]:
    """The version, and the spec's alias where it points at it (a run registered again keeps
    an alias that was promoted to a newer version since)."""
    with checkpoint.as_directory() as folder:
        weights = Path(folder, MODEL_FILE).read_bytes()
        artifacts = {p.name: p.read_bytes() for p in sorted(Path(folder, ARTIFACTS).glob("*"))}
    metrics = {"best": outcome.metrics, "baselines": outcome.baselines, "history": outcome.history}
    card = model_card(spec, dataset.schema)
    files = {
        WEIGHTS: weights,
        "model.json": json_bytes(card),
        "spec.yaml": spec_to_yaml(spec).encode(),
        "metrics.json": json_bytes(metrics),
        "lineage.json": json_bytes({**lineage(spec, dataset, outcome), **(extra_lineage or {})}),
        **artifacts,  # what the loop chose to keep with the model, e.g. a GAN's sample grid
        **id_files(dataset),
        **reference_file(dataset),
        **index_file(card, weights),
        **(extra_files or {}),
    }
    if outcome.history:
        files["curves.png"] = curves_png(outcome.history, spec.checkpoint.metric or "val_loss")
    if "confusion.json" in artifacts:
        files["confusion.png"] = confusion_png(json.loads(artifacts["confusion.json"]))
    registry = ModelRegistry.open()
    alias = spec.registration.alias if spec.registration else None
    version = registry.register(spec.model_name, files, alias=alias, run_id=outcome.run_name)
    points_here = alias and registry.aliases(spec.model_name).get(alias) == version.version
    return version, alias if points_here else None


def id_files(dataset: Dataset | StreamedDataset) -> dict[str, bytes]:
    """A recommender's user and item id maps (`users.parquet`, `items.parquet`)."""
    ids = dataset.extras.get("ids", {})
    return {f"{name}.parquet": IdMap(values).to_parquet() for name, values in ids.items()}


def reference_file(dataset: Dataset | StreamedDataset) -> dict[str, bytes]:
    """Up to 2,000 training inputs (8 MiB at most) as the model takes them, for the tasks
    whose serving tracks drift (kiln.serve.replica.drift): drawn at random from a dataset in
    memory; a streamed one's were drawn in its fitting pass (kiln.data.stream.fit)."""
    schema = dataset.schema
    if not tasks.get(schema.task).drift:
        return {}
    row_bytes = math.prod(schema.input_shape) * np.dtype(schema.input_dtype).itemsize
    rows = max(1, min(REFERENCE_ROWS, REFERENCE_BYTES // row_bytes))
    if isinstance(dataset, Dataset):
        x = dataset.x_train
        sample = x[np.sort(np.random.default_rng(0).permutation(len(x))[:rows])]
    elif dataset.sample_x is not None:
        sample = dataset.sample_x[:rows]  # in sampling order: any prefix is a uniform sample
    else:
        return {}
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(sample), allow_pickle=False)
    return {REFERENCE: buffer.getvalue()}


def index_file(card: dict[str, Any], weights: bytes) -> dict[str, bytes]:
    """A recommender's item index, built and calibrated here once rather than in every replica
    that loads the version (6.6 s for a million items); nothing for an exact search."""
    if card["task"] != "recommendation":
        return {}
    from safetensors.torch import load as load_weights

    module: Any = build_from_card(card)  # a two-tower or sequential model: item_vectors()
    module.load_state_dict(load_weights(weights))
    with torch.inference_mode():
        vectors = module.eval().item_vectors().float().numpy()
    stored = retrieval.ItemIndex(vectors, get_settings().exact_retrieval_up_to).to_bytes()
    return {retrieval.INDEX_FILE: stored} if stored else {}


def lineage(spec: JobSpec, dataset: Dataset | StreamedDataset, outcome) -> dict[str, Any]:
    return {
        **git_state(),
        "spec_sha256": spec.digest(),
        "data_fingerprint": dataset.fingerprint(),
        "run_name": outcome.run_name,
        "run_path": outcome.run_path,
        "worker_failures": outcome.failures,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain")
    return {"git_commit": commit, "git_dirty": bool(dirty) if commit else None}


def curves_png(history: list[dict[str, float]], metric: str) -> bytes:
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plots.subplots(1, 2, figsize=(9, 3.2))
    for loss in sorted(k for k in history[0] if k.endswith("_loss")):
        left.plot(epochs, [h[loss] for h in history], label=loss)
    left.set(title="losses", xlabel="epoch")
    left.legend()
    right.plot(epochs, [h[metric] for h in history], color="tab:green")
    right.set(title=metric, xlabel="epoch")
    figure.tight_layout()
    return plots.png(figure)


def confusion_png(matrix: dict[str, Any]) -> bytes:
    """The validation split's confusion matrix (rows: true class, columns: predicted), each
    row as shares of that class, with the counts written in."""
    import numpy as np

    counts = np.asarray(matrix["counts"], dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    classes = matrix["classes"]
    size = 2.5 + 0.4 * len(classes)
    figure, axis = plots.subplots(figsize=(size, size * 0.9))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title=f"validation: {counts.trace()} of {counts.sum()} right",
    )
    axis.set_xticklabels(classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    axis.set_yticklabels(classes)
    if len(classes) <= 20:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                axis.text(column, row, count, ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(image, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return plots.png(figure)
