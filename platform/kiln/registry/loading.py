"""A registered version built back into a model: its card, its architecture, and its weights
checked against the manifest.

    loaded = load_model(ModelRegistry.open(), "digits-cnn@production")
    loaded.module(x)     # an nn.Module in eval mode on the CPU
"""

from dataclasses import dataclass
from typing import Any

from safetensors.torch import load as load_safetensors
from torch import nn

from kiln import models
from kiln.errors import IntegrityError
from kiln.registry.store import WEIGHTS, ModelRegistry, ModelVersion
from kiln.schema import DataSchema
from kiln.spec import ModelSpec


@dataclass
class LoadedModel:
    version: ModelVersion
    card: dict[str, Any]  # model.json
    module: Any  # an nn.Module in eval mode on the CPU (its family's own methods too)
    registry: ModelRegistry | None = None  # to read the version's other files

    def read(self, filename: str) -> bytes:
        assert self.registry is not None, "loaded without its registry"
        return self.registry.read(self.version, filename)


def build_from_card(card: dict[str, Any]) -> nn.Module:
    spec = ModelSpec.model_validate(card["model"])
    return models.create(spec, DataSchema(**card["schema"]))


def load_model(registry: ModelRegistry, version: ModelVersion | str) -> LoadedModel:
    """A version, or a reference to one (NAME, NAME@VERSION, NAME@ALIAS)."""
    if isinstance(version, str):
        version = registry.resolve(version)
    card = registry.read_json(version, "model.json")
    module = build_from_card(card)
    state = load_safetensors(registry.read(version, WEIGHTS))
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise IntegrityError(
            f"{version.ref}: weights do not fit its model: {first[0].strip()}"
        ) from None
    module.eval()
    return LoadedModel(version, card, module, registry)
