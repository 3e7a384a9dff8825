"""The model-family registry. A builder takes the data schema and keyword-only params:

@MODELS.register("mlp")
def mlp(schema: DataSchema, *, hidden: tuple[int, ...] = (128,)) -> nn.Module: ...
"""

from collections.abc import Callable

from torch import nn

from kiln.builders import Builders

MODELS: Builders[Callable[..., nn.Module]] = Builders("model family")
