"""Classification, regression and forecasting: one model, one loss, exact validation metrics.

Validation is sharded (each rank scores every world-th example, the sums are all-reduced)
with the unwrapped module: a DDP forward would sync buffers and hang on uneven shards."""

from typing import Any

import ray.train.torch
import torch
from torch.utils.data import DataLoader, TensorDataset

from kiln import models, tasks
from kiln.data import Dataset
from kiln.metrics.supervised import SUMS, evaluation_sums, supervised_metrics
from kiln.train.session import WorkerSession, unwrap


def train_loop_per_worker(config: dict[str, Any]) -> None:
    session = WorkerSession(config)
    spec, data = session.spec, session.data
    model = session.wrap(session.prepare(models.create(spec.model, data.schema)))
    optimizer = session.optimizer(model)
    loader = train_loader(data, spec.train.batch_size, session.world)
    criterion = tasks.get(spec.task).criterion()
    for _ in session.epochs(loader):
        model.train()
        total, count = 0.0, 0.0
        for inputs, targets in loader:
            with session.autocast():
                loss = criterion(model(inputs).float(), targets)
            session.step(loss, model, optimizer)
            total += loss.item() * len(targets)
            count += len(targets)
        total, count = session.all_sum([total, count])
        metrics = {
            "train_loss": total / max(count, 1),
            **validate(session, model, data, criterion),
        }
        if session.end_epoch(metrics):
            break


def train_loader(
    data: Dataset, global_batch: int, world: int, drop_last: bool = False
) -> DataLoader:
    """`batch_size` in a spec is global: each of the `world` workers takes its share."""
    tensors = TensorDataset(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train))
    batch = max(1, global_batch // world)
    loader = DataLoader(tensors, batch_size=batch, shuffle=True, drop_last=drop_last)
    return ray.train.torch.prepare_data_loader(loader)


def validate(
    session: WorkerSession, model: torch.nn.Module, data: Dataset, criterion: torch.nn.Module
) -> dict[str, float]:
    shard = slice(session.rank, None, session.world)
    x, y = data.x_val[shard], data.y_val[shard]
    sums = evaluation_sums(unwrap(model), x, y, criterion, data.schema.task, device=session.device)
    total = session.all_sum(sums.tolist())
    assert len(total) == len(SUMS)
    return supervised_metrics(torch.tensor(total, dtype=torch.float64), data.schema)
