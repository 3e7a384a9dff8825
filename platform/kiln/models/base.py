"""The model-family registry. A builder takes the data schema and keyword-only params
(kiln.models.families registers Kiln's own):

@MODELS.register("mlp")
def mlp(schema: DataSchema, *, hidden: tuple[int, ...] = (128,)) -> nn.Module: ...
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

from kiln.builders import Builders

if TYPE_CHECKING:
    from torch import nn

MODELS: "Builders[Callable[..., nn.Module]]" = Builders("model family")
