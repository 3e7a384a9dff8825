"""Classification, regression and forecasting: one model, one criterion, exact validation
metrics (kiln.metrics.supervised), and the model's output answered as it is (or as
probabilities and a label)."""

from typing import Any

from kiln.schema import DataSchema
from kiln.tasks.base import Task, Tensor, register

DATATYPES = {"float32": "FP32", "int64": "INT64"}  # Open Inference Protocol names
LOOP = "kiln.train.loops.supervised"


def signature(schema: DataSchema, params: dict[str, Any]) -> tuple[Tensor, Tensor]:
    dtype = DATATYPES[schema.input_dtype]
    name = "waveform" if "audio" in schema.transform else "input"  # a speech model's clips
    inputs = {"name": name, "datatype": dtype, "shape": [-1, *schema.input_shape]}
    outputs = {"name": "output", "datatype": "FP32", "shape": [-1, schema.output_dim]}
    return inputs, outputs


def cross_entropy() -> Any:
    from torch import nn

    return nn.CrossEntropyLoss()


def mean_squared_error() -> Any:
    from torch import nn

    return nn.MSELoss()


CLASSIFICATION = register(
    Task(
        name="classification",
        metrics=("val_accuracy", "val_loss", "train_loss"),
        objective=("val_accuracy", "max"),
        loop=LOOP,
        predictor="kiln.serve.replica.predictor:Classifier",
        signature=signature,
        loss=cross_entropy,
        drift=True,
    )
)
for name, predictor in (("regression", "Predictor"), ("forecasting", "Forecaster")):
    register(
        Task(
            name=name,
            metrics=("val_mae", "val_rmse", "val_loss", "train_loss"),
            objective=("val_mae", "min"),
            loop=LOOP,
            predictor=f"kiln.serve.replica.predictor:{predictor}",
            signature=signature,
            loss=mean_squared_error,
            drift=True,
        )
    )
