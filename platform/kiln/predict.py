"""What a trained model is outside of training: its card (`model.json`), its weights as
safetensors, and how to build it back from the registry."""

from typing import Any

from safetensors.torch import load as load_safetensors
from torch import nn

from kiln import models
from kiln.data import DataSchema
from kiln.errors import IntegrityError
from kiln.registry import WEIGHTS, LoadedModel, ModelRegistry, ModelVersion
from kiln.spec import JobSpec, ModelSpec

DATATYPES = {"float32": "FP32", "int64": "INT64"}  # Open Inference Protocol names


def model_card(spec: JobSpec, schema: DataSchema) -> dict[str, Any]:
    if spec.task == "generation":  # latent vectors in, images out
        latent = models.family_params(spec.model).get("latent_dim")
        inputs = {"name": "latent", "datatype": "FP32", "shape": [-1, latent]}
        outputs = {"name": "images", "datatype": "FP32", "shape": [-1, *schema.input_shape]}
    elif spec.task == "recommendation":  # (user index, recent items) in, a score per item out
        inputs = {"name": "history", "datatype": "INT64", "shape": [-1, *schema.input_shape]}
        outputs = {"name": "scores", "datatype": "FP32", "shape": [-1, schema.output_dim]}
    else:
        dtype = DATATYPES[schema.input_dtype]
        inputs = {"name": "input", "datatype": dtype, "shape": [-1, *schema.input_shape]}
        outputs = {"name": "output", "datatype": "FP32", "shape": [-1, schema.output_dim]}
    return {
        "name": spec.model_name,
        "task": spec.task,
        "model": spec.model.model_dump(mode="json", by_alias=True),
        "schema": schema.to_json(),
        "inputs": [inputs],
        "outputs": [outputs],
    }


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel, if it is wrapped."""
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, nn.Module) else module


def build_from_card(card: dict[str, Any]) -> nn.Module:
    spec = ModelSpec.model_validate(card["model"])
    return models.create(spec, DataSchema(**card["schema"]))


def load_model(registry: ModelRegistry, version: ModelVersion) -> LoadedModel:
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
    return LoadedModel(version, card, module)
