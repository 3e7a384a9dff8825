"""A user's own model, built by import path (`model: {import: "tests.models.custom:tiny"}`)."""

from torch import nn


def tiny(schema, width: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(schema.input_shape[0], width),
        nn.ReLU(),
        nn.Linear(width, schema.output_dim),
    )
