"""Large embedding tables updated row by row. A step of a recommender over a million items
reads a few thousand rows of its tables, but dense AdamW moves every row (its moments and
weight decay) and DDP all-reduces every row's gradient. With `nn.Embedding(sparse=True)` the
gradient holds only the rows a batch used: PyTorch's SparseAdam updates those (lazy Adam: a
row's moments advance when it is used; no weight decay), gloo all-reduces them, and the
spec's optimizer keeps the rest of the model.

    tables = mark_sparse_tables(model, spec.train.optimizer, device)  # before DDP wraps it
    optimizer = with_sparse_tables(make_optimizer(rest, ...), tables)  # one optimizer
    clip_gradients(model.parameters(), max_norm)                      # sparse ones included
"""

from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from kiln.spec import OptimizerSpec

SPARSE_FROM_ROWS = 100_000  # `auto`: tables this large; smaller ones cost little dense


def mark_sparse_tables(
    model: nn.Module, optimizer: OptimizerSpec, device: torch.device
) -> list[nn.Parameter]:
    """Switch the embedding tables the setting selects to sparse gradients, and return their
    weights. `auto`: tables of SPARSE_FROM_ROWS rows or more, with Adam or AdamW, on CPUs
    (gloo all-reduces sparse gradients; NCCL's support is not relied on). A table whose
    weight is computed (spectral norm) keeps dense gradients."""
    setting = optimizer.sparse_embeddings
    if setting is False or optimizer.name == "sgd" or (setting == "auto" and device.type != "cpu"):
        return []
    least_rows = SPARSE_FROM_ROWS if setting == "auto" else 0
    tables = [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding)
        and isinstance(m.weight, nn.Parameter)
        and m.num_embeddings >= least_rows
    ]
    for table in tables:
        table.sparse = True
    return [cast(nn.Parameter, t.weight) for t in tables]


class WithSparseTables(torch.optim.Optimizer):
    """The spec's optimizer and SparseAdam as one optimizer: schedulers set both's learning
    rates (their parameter groups are these), GradScaler unscales and steps both, and a
    checkpoint holds both's state."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.SparseAdam):
        self.parts = (dense, sparse)
        super().__init__([*dense.param_groups, *sparse.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, state in zip(self.parts, state_dict["parts"], strict=True):
            part.load_state_dict(state)  # which replaces the part's group dicts: share them again
        self.param_groups = [group for part in self.parts for group in part.param_groups]


def with_sparse_tables(
    dense: torch.optim.Optimizer, tables: list[nn.Parameter], lr: float, betas: tuple
) -> torch.optim.Optimizer:
    if not tables:
        return dense
    return WithSparseTables(dense, torch.optim.SparseAdam(tables, lr=lr, betas=betas))


@torch.no_grad()
def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` over dense and sparse gradients alike (PyTorch's refuses sparse
    ones): a sparse gradient's norm is its coalesced values' (a row used twice sums first)."""
    parameters = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in parameters if p.grad is not None]  # (for the type checker)
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    values = [g.coalesce().values() if g.is_sparse else g for g in grads]
    total = torch.nn.utils.get_total_norm(values)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device))
    return total
