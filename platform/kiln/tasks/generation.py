"""Generation: a GAN trained adversarially, scored by the Fréchet distance of a digit
classifier's features; served from latent vectors or seeds to images."""

from typing import Any

from kiln.schema import DataSchema
from kiln.tasks.base import Task, Tensor, register


def signature(schema: DataSchema, params: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Latent vectors in, images out."""
    inputs = {"name": "latent", "datatype": "FP32", "shape": [-1, params.get("latent_dim")]}
    outputs = {"name": "images", "datatype": "FP32", "shape": [-1, *schema.input_shape]}
    return inputs, outputs


GENERATION = register(
    Task(
        name="generation",
        metrics=("val_fid", "val_confident", "val_requested", "d_loss", "g_loss", "train_loss"),
        objective=("val_fid", "min"),
        loop="kiln.train.loops.gan",
        prepare="kiln.train.loops.gan:prepare",
        predictor="kiln.serve.replica.predictor:Generator",
        signature=signature,
    )
)
