"""The loop each Ray Train worker runs: DDP model, sharded loaders, AMP on GPUs, gradient
clipping, validation every epoch, a checkpoint every epoch, early stopping, resume.

Every rank computes the same validation metrics (shard sums are all-reduced), so every rank
takes the same early-stopping decision and calls `ray.train.report` the same number of times.
"""

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from kiln import models
from kiln.data import Dataset
from kiln.evaluate import evaluation_sums, loss_function, metrics_from_sums
from kiln.predict import unwrap
from kiln.spec import JobSpec, TrainSpec
from kiln.train import amp

MODEL_FILE, STATE_FILE = "model.safetensors", "state.pt"


@dataclass
class Progress:
    """What survives a restart besides the weights and optimizer."""

    epoch: int = 0  # epochs completed
    best: float | None = None  # best early-stopping metric so far
    stale_epochs: int = 0  # epochs since it improved
    resumed_from: int | None = None  # the checkpoint's epoch, if this attempt resumed
    history: list[dict[str, float]] = field(default_factory=list)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = JobSpec.model_validate(config["spec"])
    data: Dataset = ray.get(config["data"])
    torch.manual_seed(spec.train.seed)
    world = ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(models.create(spec.model, data.schema))
    loader = _train_loader(data, spec.train.batch_size, world)
    optimizer = _optimizer(model, spec.train)
    scheduler = _scheduler(optimizer, spec.train)
    precision = amp.precision(spec.train.precision, device)
    scaler = torch.amp.GradScaler(enabled=precision == torch.float16)
    progress = _restore(model, optimizer, scheduler, scaler)

    started = time.monotonic()
    for epoch in range(progress.epoch, spec.train.epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        tick = time.monotonic()
        train_loss = _train_epoch(model, loader, optimizer, scaler, precision, spec, device)
        metrics = {"train_loss": train_loss, **_validate(model, data, device, world)}
        scheduler.step()
        progress.epoch = epoch + 1
        metrics |= {
            "epoch": epoch + 1,
            "epochs": spec.train.epochs,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.monotonic() - tick,
            "elapsed_s": time.monotonic() - started,
            "resumed_from": -1 if progress.resumed_from is None else progress.resumed_from,
        }
        stop = _early_stop(progress, metrics, spec)
        metrics["early_stopped"] = stop
        progress.history.append({k: float(v) for k, v in metrics.items()})
        _report(metrics, model, optimizer, scheduler, scaler, progress)
        if stop:
            break


def _train_loader(data: Dataset, global_batch: int, world: int) -> DataLoader:
    """`batch_size` in a spec is global: each of the `world` workers takes its share."""
    tensors = TensorDataset(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train))
    batch = max(1, global_batch // world)
    return ray.train.torch.prepare_data_loader(DataLoader(tensors, batch_size=batch, shuffle=True))


def _train_epoch(model, loader, optimizer, scaler, precision, spec: JobSpec, device) -> float:
    model.train()
    criterion = loss_function(spec.task)
    total, count = 0.0, 0
    for inputs, targets in loader:
        with amp.autocast(device, precision):
            loss = criterion(model(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if spec.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(targets)
        count += len(targets)
    sums = torch.tensor([total, count], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    return float(sums[0] / sums[1].clamp(min=1))


def _validate(model, data: Dataset, device, world: int) -> dict[str, float]:
    """Each rank scores every world-th example; the sums are added across ranks. The unwrapped
    module is used: a DDP forward would sync buffers and hang on uneven shards."""
    rank = ray.train.get_context().get_world_rank()
    shard = slice(rank, None, world)
    sums = evaluation_sums(
        unwrap(model), data.x_val[shard], data.y_val[shard], data.schema.task, device=device
    ).to(device)
    if world > 1:
        dist.all_reduce(sums)
    return metrics_from_sums(sums.cpu(), data.schema)


def _early_stop(progress: Progress, metrics: dict[str, Any], spec: JobSpec) -> bool:
    rule = spec.train.early_stopping
    if rule is None or rule.metric is None:
        return False
    value = metrics[rule.metric]
    sign = 1 if rule.mode == "max" else -1
    if progress.best is None or sign * (value - progress.best) > rule.min_delta:
        progress.best, progress.stale_epochs = value, 0
    else:
        progress.stale_epochs += 1
    return progress.stale_epochs >= rule.patience


def _report(metrics, model, optimizer, scheduler, scaler, progress: Progress) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
        save_file(state, os.path.join(folder, MODEL_FILE))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "progress": asdict(progress),
            },
            os.path.join(folder, STATE_FILE),
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _restore(model, optimizer, scheduler, scaler) -> Progress:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as folder:
        unwrap(model).load_state_dict(load_file(os.path.join(folder, MODEL_FILE)))
        state = torch.load(os.path.join(folder, STATE_FILE), weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    progress = Progress(**state["progress"])
    progress.resumed_from = progress.epoch
    return progress


def _optimizer(model: torch.nn.Module, train: TrainSpec) -> torch.optim.Optimizer:
    o = train.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    optimizer_class = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _scheduler(
    optimizer: torch.optim.Optimizer, train: TrainSpec
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: linear warm-up, then constant, cosine or step decay."""
    s = train.schedule
    warmup = min(s.warmup_epochs, train.epochs - 1)
    decay_epochs = max(train.epochs - warmup, 1)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        t = epoch - warmup
        if s.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t / decay_epochs))
        if s.name == "step":
            return s.gamma ** (t // s.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
