"""A user's own model, built by import path (`model: {import: "tests.models.custom:tiny"}`)."""

from torch import nn


def tiny(schema, width: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(schema.input_shape[0], width),
        nn.ReLU(),
        nn.Linear(width, schema.output_dim),
    )


def lazy(schema, width: int = 16) -> nn.Module:
    """Sized by its first input, as users often write a CNN's head (nn.LazyLinear)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.LazyLinear(width),
        nn.LazyBatchNorm1d(),
        nn.ReLU(),
        nn.LazyLinear(schema.output_dim),
    )


def sized_for_other_data(schema, width: int = 4, log: str | None = None) -> nn.Module:
    """A first layer for 9 features, whatever the data gives; `log`: a file that gets a
    line each time it is built."""
    if log:
        with open(log, "a") as f:
            f.write("built\n")
    return nn.Sequential(nn.Flatten(), nn.Linear(9, width), nn.Linear(width, schema.output_dim))


def one_output(schema, width: int = 4) -> nn.Module:
    """One number per example, whatever the task needs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(schema.input_shape[0], 1))


def a_pair(schema, width: int = 4) -> nn.Module:
    """Gives (logits, features): not what a classifier's loop takes."""

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(schema.input_shape[0], schema.output_dim)

        def forward(self, x):
            return self.head(x), x

    return Pair()


def fails(schema, width: int = 4) -> nn.Module:
    """Reads a setting the data does not have."""
    return nn.Linear(schema.transform["hidden_units"], width)
