"""The model registry. A builder takes the data schema and keyword-only params:

@MODELS.register("mlp")
def mlp(schema: DataSchema, *, hidden: tuple[int, ...] = (128,)) -> nn.Module: ...
"""

from collections.abc import Callable

from torch import nn

from kiln.naming import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model family")
