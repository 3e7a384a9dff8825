"""What every per-worker loop shares: the Ray Train context, device and precision, the
optimizers and schedulers the spec asks for, and one epoch protocol:

    session = WorkerSession(config)
    model = session.prepare(models.create(spec.model, schema))
    optimizer = session.optimizer(model)            # tracked: checkpointed and restored
    for epoch in session.epochs(loader):            # after the restored epoch
        ...train and validate...
        if session.end_epoch(metrics, artifacts):   # report + checkpoint; True = stop early
            break

Every rank calls `end_epoch` with the same metrics (loops all-reduce them), so every rank
reaches `ray.train.report` (a barrier) the same number of times and stops together.
"""

import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from kiln.data import Dataset
from kiln.spec import JobSpec, TrainSpec
from kiln.train import amp
from kiln.train.sparse import clip_gradients, mark_sparse_tables, with_sparse_tables

MODEL_FILE, STATE_FILE, ARTIFACTS = "model.safetensors", "state.pt", "artifacts"


@dataclass
class Progress:
    """What survives a restart besides weights and optimizer state."""

    epoch: int = 0  # epochs completed
    best: float | None = None  # best early-stopping metric so far
    stale_epochs: int = 0  # epochs since it improved
    resumed_from: int | None = None  # the checkpoint's epoch, if this attempt resumed
    history: list[dict[str, float]] = field(default_factory=list)


class WorkerSession:
    def __init__(self, config: dict[str, Any]):
        self.spec = JobSpec.model_validate(config["spec"])
        self.data: Dataset = ray.get(config["data"])
        self.extras: dict[str, Any] = config.get("extras", {})
        self.start_from: dict[str, str] | None = config.get("start_from")
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.dtype = amp.precision(self.spec.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.model: nn.Module | None = None
        self.sparse_tables: list[nn.Parameter] = []  # embedding weights with sparse gradients
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.progress = Progress()
        self._started = time.monotonic()
        self._epoch_started = self._started
        torch.manual_seed(self.spec.train.seed)

    # --- building -------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        """The whole model is what gets checkpointed and registered; pass parts of it to
        `wrap` for DDP when a loop trains them separately (a GAN's two networks)."""
        self.model = model.to(self.device)
        self.sparse_tables = mark_sparse_tables(model, self.spec.train.optimizer, self.device)
        return self.model

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around a module that is trained by its own forward calls."""
        if self.world == 1:
            return module
        return ray.train.torch.prepare_model(module, move_to_device=False)

    def optimizer(
        self, module: nn.Module, name: str = "model", lr_scale: float = 1.0
    ) -> torch.optim.Optimizer:
        sparse = {id(t) for t in self.sparse_tables}
        tables = [p for p in module.parameters() if id(p) in sparse]
        rest = [p for p in module.parameters() if id(p) not in sparse]
        o = self.spec.train.optimizer
        optimizer = with_sparse_tables(
            make_optimizer(rest, self.spec.train, lr_scale), tables, o.lr * lr_scale, o.betas
        )
        self.optimizers[name] = optimizer
        self.schedulers[name] = make_scheduler(optimizer, self.spec.train)
        return optimizer

    def autocast(self):
        return amp.autocast(self.device, self.dtype)

    def step(self, loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Backward, clip, step: with the fp16 GradScaler when that precision is in use."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.spec.train.grad_clip:
            self.scaler.unscale_(optimizer)
            clip_gradients(module.parameters(), self.spec.train.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank: each rank updates
        them with its own batches, and only rank 0's are checkpointed, so validation on the
        other ranks would otherwise score a model that is never registered."""
        if self.world == 1:
            return
        for buffer in unwrap(module).buffers():
            dist.broadcast(buffer.data, src=0)

    def all_sum(self, values: list[float]) -> list[float]:
        """Sums across ranks (each rank passes its own partial sums)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    # --- the epoch protocol ---------------------------------------------------------------

    def epochs(self, loader: DataLoader | None = None) -> Iterator[int]:
        """Epochs after the restored one; reshuffles `loader`'s distributed sampler each time."""
        self._restore()
        for epoch in range(self.progress.epoch, self.spec.train.epochs):
            self._epoch_started = time.monotonic()
            if loader is not None and isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            yield epoch

    def end_epoch(
        self, metrics: dict[str, float], artifacts: dict[str, bytes] | None = None
    ) -> bool:
        for scheduler in self.schedulers.values():
            scheduler.step()
        progress = self.progress
        progress.epoch += 1
        first_optimizer = next(iter(self.optimizers.values()))
        metrics = {
            **metrics,
            "epoch": progress.epoch,
            "epochs": self.spec.train.epochs,
            "lr": first_optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.monotonic() - self._epoch_started,
            "elapsed_s": time.monotonic() - self._started,
            "resumed_from": -1 if progress.resumed_from is None else progress.resumed_from,
        }
        diverged = not all(math.isfinite(v) for k, v in metrics.items() if k.endswith("_loss"))
        stop = diverged or self._early_stop(metrics)
        metrics["early_stopped"], metrics["diverged"] = stop, diverged
        progress.history.append({k: float(v) for k, v in metrics.items()})
        self._report(metrics, artifacts or {})
        return stop

    def _early_stop(self, metrics: dict[str, Any]) -> bool:
        rule = self.spec.train.early_stopping
        if rule is None or rule.metric is None:
            return False
        value, progress = metrics[rule.metric], self.progress
        sign = 1 if rule.mode == "max" else -1
        if progress.best is None or sign * (value - progress.best) > rule.min_delta:
            progress.best, progress.stale_epochs = value, 0
        else:
            progress.stale_epochs += 1
        return progress.stale_epochs >= rule.patience

    def _report(self, metrics: dict[str, Any], artifacts: dict[str, bytes]) -> None:
        """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        assert self.model is not None, "call session.prepare(model) first"
        with tempfile.TemporaryDirectory() as folder:
            state = {
                k: v.detach().cpu().contiguous() for k, v in unwrap(self.model).state_dict().items()
            }
            save_file(state, os.path.join(folder, MODEL_FILE))
            torch.save(
                {
                    "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                    "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                    "scaler": self.scaler.state_dict(),
                    "progress": asdict(self.progress),
                },
                os.path.join(folder, STATE_FILE),
            )
            if artifacts:
                os.makedirs(os.path.join(folder, ARTIFACTS))
                for name, data in artifacts.items():
                    with open(os.path.join(folder, ARTIFACTS, name), "wb") as f:
                        f.write(data)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def _restore(self) -> None:
        """From this run's latest checkpoint (a restart after a failure), else from the one
        the run was started from (`start_from`: a PBT donor's, whose weights, optimizer state
        and epochs it takes, with its own hyperparameters)."""
        checkpoint, inherited = ray.train.get_checkpoint(), False
        if checkpoint is None and self.start_from is not None:
            checkpoint, inherited = _checkpoint_at(**self.start_from), True
        if checkpoint is None:
            return
        assert self.model is not None, "call session.prepare(model) first"
        own = {n: hyperparameters(o, self.schedulers[n]) for n, o in self.optimizers.items()}
        with checkpoint.as_directory() as folder:
            unwrap(self.model).load_state_dict(load_file(os.path.join(folder, MODEL_FILE)))
            state = read_state(folder)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
            if inherited:
                take_hyperparameters(optimizer, self.schedulers[name], *own[name])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self.progress.resumed_from = self.progress.epoch


def read_state(folder: str) -> dict[str, Any]:
    """A checkpoint's training state (optimizers, schedulers, progress) on the CPU: one written
    on a GPU is read on a CPU-only driver and resumed on a CPU node too (load_state_dict moves
    the optimizer's state to its parameters' device)."""
    return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)


def _checkpoint_at(path: str, storage: str) -> ray.train.Checkpoint:
    """A checkpoint by its path in the storage (a local path or a URI pyarrow opens)."""
    import pyarrow.fs as pafs

    return ray.train.Checkpoint(path, filesystem=pafs.FileSystem.from_uri(storage)[0])


def hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> tuple[list[dict[str, Any]], list[float]]:
    """An optimizer's settings per parameter group (lr, betas, weight decay...) and its
    scheduler's base learning rates: what loading another run's state would overwrite."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return groups, [float(lr) for lr in scheduler.base_lrs]


def take_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    groups: list[dict[str, Any]],
    base_lrs: list[float],
) -> None:
    """Put this run's settings back over a loaded state, keeping its moments and its place
    in the schedule: the learning rate is this run's base at the loaded epoch."""
    scheduler.base_lrs = list(base_lrs)
    factors = getattr(scheduler, "lr_lambdas", None) or [lambda _: 1.0] * len(base_lrs)
    for group, settings, base, factor in zip(
        optimizer.param_groups, groups, base_lrs, factors, strict=True
    ):
        group.update(settings, lr=base * factor(scheduler.last_epoch))


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel, if it is wrapped."""
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, nn.Module) else module


def make_optimizer(params, train: TrainSpec, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    o = train.optimizer
    lr = o.lr * lr_scale
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    optimizer_class = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=lr, betas=o.betas, weight_decay=o.weight_decay)


def make_scheduler(
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
