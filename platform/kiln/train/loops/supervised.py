"""Classification, regression and forecasting: one model, one loss, exact validation metrics,
from memory or from a Ray Data stream (kiln.train.feed).

Validation is sharded (each rank scores its share, the sums are all-reduced) with the
unwrapped module: a DDP forward would sync buffers and hang on uneven shards."""

import json
import time
from typing import Any

import torch

from kiln import models, tasks
from kiln.data import StreamedDataset
from kiln.metrics.supervised import CONFUSION_CLASSES, SUMS, evaluation_sums, supervised_metrics
from kiln.train.feed import MemoryFeed, StreamFeed, feed_for
from kiln.train.session import WorkerSession, unwrap


def train_loop_per_worker(config: dict[str, Any]) -> None:
    session = WorkerSession(config)
    spec, data = session.spec, session.data
    model = session.wrap(session.prepare(models.create(spec.model, data.schema)))
    optimizer = session.optimizer(model)
    feed = feed_for(session, spec.train.batch_size)
    criterion = tasks.get(spec.task).criterion()
    for epoch in session.epochs():
        model.train()
        total, count = 0.0, 0.0
        started = time.perf_counter()
        for inputs, targets in feed.epoch(epoch):
            with session.autocast():
                loss = criterion(model(inputs).float(), targets)
            session.step(loss, model, optimizer)
            total += loss.item() * len(targets)
            count += len(targets)
        seconds = time.perf_counter() - started
        total, count, seconds = session.all_sum([total, count, seconds])
        scores, artifacts = validate(session, model, feed, criterion)
        metrics = {
            "train_loss": total / max(count, 1),
            "train_rows_per_s": count / max(seconds / session.world, 1e-9),  # all ranks
            **rows_accounted(data, count),
            **feed.wait.metrics(session),
            **scores,
        }
        if session.end_epoch(metrics, artifacts):
            break


def rows_accounted(data: Any, rows: float) -> dict[str, float]:
    """A streamed epoch's rows against the rows counted before training: what the equal
    split left out is reported, never silently dropped."""
    if not isinstance(data, StreamedDataset):
        return {}
    return {"train_rows": rows, "train_rows_dropped": data.train_rows - rows}


def validate(
    session: WorkerSession,
    model: torch.nn.Module,
    feed: MemoryFeed | StreamFeed,
    criterion: torch.nn.Module,
) -> tuple[dict[str, float], dict[str, bytes]]:
    """The validation metrics, and a classifier's confusion matrix (`confusion.json`, kept
    with the checkpoint, drawn when the version is registered)."""
    schema = session.data.schema
    session.sync_buffers(model)
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    classes = schema.output_dim if schema.task == "classification" else 0
    counted = 0 < classes <= CONFUSION_CLASSES
    confusion = torch.zeros(classes, classes, dtype=torch.int64) if counted else None
    for x, y in feed.validation():
        sums += evaluation_sums(
            unwrap(model), x, y, criterion, schema.task, device=session.device, confusion=confusion
        )
    totals = session.all_sum(
        sums.tolist() + ([] if confusion is None else confusion.flatten().tolist())
    )
    metrics = supervised_metrics(torch.tensor(totals[: len(SUMS)]), schema)
    if confusion is None:
        return metrics, {}
    counts = torch.tensor(totals[len(SUMS) :]).round().long().view(classes, classes)
    labels = schema.classes or [str(i) for i in range(classes)]
    matrix = {"classes": labels, "counts": counts.tolist()}
    return metrics, {"confusion.json": json.dumps(matrix).encode()}
