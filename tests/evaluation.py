"""Scoring a model outside training, as tests and benchmarks check what training reported."""

import numpy as np
from torch import nn

from kiln import tasks
from kiln.metrics.supervised import evaluation_sums, supervised_metrics
from kiln.schema import DataSchema


def evaluate(module: nn.Module, x: np.ndarray, y: np.ndarray, schema: DataSchema) -> dict:
    loss = tasks.get(schema.task).criterion()
    return supervised_metrics(evaluation_sums(module, x, y, loss, schema.task), schema)
