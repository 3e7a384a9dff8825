"""Supervised metrics (classification, regression, forecasting), computed the same way during
training (sharded across workers, then summed) and after loading a model from the registry.

    sums = evaluation_sums(module, data.x_val, data.y_val, task.criterion(), data.schema.task)
    supervised_metrics(sums, data.schema)
    # {"val_loss": .., "val_accuracy": ..} or {"val_loss": .., "val_mae": .., "val_rmse": ..}

A classifier's confusion matrix is counted in the same pass (`confusion=`), for up to
`CONFUSION_CLASSES` classes (a larger one is not read as a picture).
"""

import math

import numpy as np
import torch
from torch import nn

from kiln.schema import DataSchema

# Running sums in a fixed order, so workers can add theirs with one all_reduce.
SUMS = ("loss", "examples", "correct", "abs_error", "sq_error", "values")
CONFUSION_CLASSES = 50


def batch_sums(
    outputs: torch.Tensor, targets: torch.Tensor, loss: nn.Module, task: str
) -> torch.Tensor:
    """(6,) float64 sums of one batch, in the order of SUMS."""
    outputs = outputs.float()
    n = len(targets)
    loss_sum = loss(outputs, targets).item() * n
    if task == "classification":
        correct = (outputs.argmax(dim=1) == targets).sum().item()
        return torch.tensor([loss_sum, n, correct, 0, 0, 0], dtype=torch.float64)
    error = outputs - targets
    return torch.tensor(
        [loss_sum, n, 0, error.abs().sum().item(), (error**2).sum().item(), error.numel()],
        dtype=torch.float64,
    )


def supervised_metrics(
    sums: torch.Tensor, schema: DataSchema, prefix: str = "val_"
) -> dict[str, float]:
    total = dict(zip(SUMS, sums.tolist(), strict=True))
    metrics = {f"{prefix}loss": total["loss"] / max(total["examples"], 1)}
    if schema.task == "classification":
        metrics[f"{prefix}accuracy"] = total["correct"] / max(total["examples"], 1)
    else:  # errors in the data's own units
        values = max(total["values"], 1)
        metrics[f"{prefix}mae"] = total["abs_error"] / values * schema.target_scale
        metrics[f"{prefix}rmse"] = math.sqrt(total["sq_error"] / values) * schema.target_scale
    return metrics


@torch.inference_mode()
def evaluation_sums(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss: nn.Module,
    task: str,
    batch_size: int = 512,
    device: torch.device | None = None,
    confusion: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SUMS over (x, y); a classifier's counts are also added to `confusion` (classes x
    classes, rows: the true class, columns: the predicted one) when it is given."""
    module.eval()
    device = device or torch.device("cpu")
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        inputs = torch.as_tensor(x[start : start + batch_size], device=device)
        targets = torch.as_tensor(y[start : start + batch_size], device=device)
        outputs = module(inputs)
        sums += batch_sums(outputs, targets, loss, task)
        if confusion is not None:
            pairs = targets.cpu() * len(confusion) + outputs.argmax(dim=1).cpu()
            confusion += torch.bincount(pairs, minlength=confusion.numel()).view_as(confusion)
    return sums
