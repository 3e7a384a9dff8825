"""Recommendation: a two-tower or sequential model trained on next-item prediction, ranked
under the NCF protocol (kiln.metrics.ranking); served as scores over the protocol and as top-k
items."""

from typing import Any

from kiln.schema import DataSchema
from kiln.tasks.base import Task, Tensor, register


def signature(schema: DataSchema, params: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(user index, recent items) in, a score per item out."""
    inputs = {"name": "history", "datatype": "INT64", "shape": [-1, *schema.input_shape]}
    outputs = {"name": "scores", "datatype": "FP32", "shape": [-1, schema.output_dim]}
    return inputs, outputs


RECOMMENDATION = register(
    Task(
        name="recommendation",
        metrics=("val_hr10", "val_ndcg10", "val_recall20", "train_loss"),
        objective=("val_ndcg10", "max"),
        loop="kiln.train.loops.recommend",
        predictor="kiln.serve.replica.predictor:Recommender",
        signature=signature,
    )
)
