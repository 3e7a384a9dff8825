"""Multi-layer perceptron (ANN) for any fixed-size float input: tables, flattened images."""

from typing import Literal

import torch
from pydantic import confloat
from torch import nn

from kiln.errors import SpecError
from kiln.models.base import MODELS
from kiln.schema import DataSchema

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        out_features: int,
        dropout: float,
        activation: str,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, out)
        return self.net(x)


@MODELS.register("mlp")
def mlp(
    schema: DataSchema,
    *,
    hidden: tuple[int, ...] = (128, 64),
    dropout: confloat(ge=0, lt=1) = 0.1,  # type: ignore[valid-type]
    activation: Literal["relu", "gelu", "tanh"] = "relu",
) -> nn.Module:
    if schema.input_dtype != "float32":
        raise SpecError("mlp needs float features; this data gives token ids (use rnn)")
    in_features = 1
    for size in schema.input_shape:
        in_features *= size
    return MLP(in_features, tuple(hidden), schema.output_dim, dropout, activation)
