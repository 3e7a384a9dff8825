"""Model families, by name, in the style of timm.

    model = create(spec.model, schema)     # an nn.Module for this data
    list_models()                          # ["cnn", "mlp", "rnn", ...]

A spec names a registered `family`, or its own builder with `import: "pkg.module:function"`;
either way the builder is called as `builder(schema, **params)`. Importing this package (and
checking a spec) imports no torch: the networks load when one is built.
"""

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from kiln import tasks
from kiln.builders import import_object
from kiln.errors import SpecError
from kiln.models import families  # noqa: F401  (registers the families)
from kiln.models.base import MODELS
from kiln.schema import DataSchema

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "ModelSpec", "check", "create", "list_models"]


class ModelSpec(Protocol):
    """What a job spec's `model` section says (kiln.spec.ModelSpec has these fields)."""

    family: str | None
    import_path: str | None
    params: dict[str, Any]


def list_models() -> list[str]:
    return MODELS.names()


def check(spec: ModelSpec) -> None:
    """The family or import exists and the params fit its builder; nothing is built."""
    if spec.family is not None:
        try:
            MODELS.get(spec.family)
        except SpecError as e:
            raise SpecError(str(e), field="model.family") from None
        MODELS.validate_params(spec.family, spec.params)
        return
    builder = _import_builder(spec.import_path or "")
    try:
        inspect.signature(builder).bind(None, **spec.params)
    except TypeError as e:
        raise SpecError(f"{spec.import_path}: {e}", field="model.params") from None


def family_params(spec: ModelSpec) -> dict[str, Any]:
    """The params a registered family is built with, defaults included ({} for imports)."""
    return MODELS.validate_params(spec.family, spec.params) if spec.family else dict(spec.params)


def create(spec: ModelSpec, schema: DataSchema) -> "nn.Module":
    """The family's network for this data; behind a log-mel front end when the data are
    waveforms (kiln.models.speech). When the task's loop calls `model(inputs)`, two
    examples pass through it first: that sizes its lazy layers (`nn.LazyLinear`), as
    PyTorch asks before DDP or an optimizer sees them, and a network that does not fit the
    data (a layer sized for other data, an output that is not one row of `output_dim` per
    example), or a builder that fails, is a SpecError: a mistake that a run does not retry
    (kiln.train.mistakes). Two examples cost milliseconds."""
    try:
        model = _build(spec, schema)
    except SpecError:
        raise
    except Exception as e:  # a user's builder may raise anything
        raise _mistake(spec, schema, "cannot be built for", e) from None
    if tasks.get(schema.task).model_takes_inputs:
        try:
            _try_examples(model, spec, schema)
        except SpecError:
            raise
        except Exception as e:
            raise _mistake(spec, schema, "does not fit", e) from None
    return model


def _build(spec: ModelSpec, schema: DataSchema) -> "nn.Module":
    if "audio" not in schema.transform:
        return _create(spec, schema)
    from kiln.models import speech

    try:
        body = _create(spec, speech.feature_schema(schema))
    except SpecError as e:
        hint = "data.params.layout: image gives (1, n_mels, frames), sequence (frames, n_mels)"
        raise SpecError(f"{e} ({hint})", field=e.field) from None
    return speech.wrap(schema, body)


def _try_examples(model: "nn.Module", spec: ModelSpec, schema: DataSchema) -> None:
    """Two examples of zeros (a valid token id, a valid image) on the model's own device, in
    eval mode (no batch statistics, no dropout)."""
    import torch

    device = next(model.parameters(), torch.empty(0)).device
    examples = torch.zeros((2, *schema.input_shape), dtype=getattr(torch, schema.input_dtype))
    training = model.training
    model.eval()
    with torch.no_grad():
        output = model(examples.to(device))
    model.train(training)
    shape = list(output.shape) if isinstance(output, torch.Tensor) else None
    if shape != [2, schema.output_dim]:
        gives = f"shape {shape}" if shape is not None else f"a {type(output).__name__}"
        raise SpecError(
            f"{_named(spec)} gives {gives} for 2 examples ({_inputs(schema)}); "
            f"{schema.task} needs shape [2, {schema.output_dim}]: one row of output_dim per "
            "example",
            field=_field(spec),
        )


def _mistake(spec: ModelSpec, schema: DataSchema, what: str, error: Exception) -> SpecError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return SpecError(
        f"{_named(spec)} {what} the data ({_inputs(schema)}): {type(error).__name__}: {first_line}",
        field=_field(spec),
    )


def _field(spec: ModelSpec) -> str:
    return "model.import" if spec.import_path else "model"


def _named(spec: ModelSpec) -> str:
    return spec.import_path or f"model family {spec.family}"


def _inputs(schema: DataSchema) -> str:
    return f"input shape {schema.input_shape}, {schema.input_dtype}"


def _create(spec: ModelSpec, schema: DataSchema) -> "nn.Module":
    from torch import nn

    if spec.family is not None:
        params = MODELS.validate_params(spec.family, spec.params)
        return MODELS.get(spec.family)(schema, **params)
    model = _import_builder(spec.import_path or "")(schema, **spec.params)
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec.import_path} returned {type(model).__name__}, not an nn.Module")
    return model


def _import_builder(path: str) -> Callable[..., Any]:
    builder = import_object(path, field="model.import")
    if not callable(builder):
        raise SpecError(f"{path} is not callable", field="model.import")
    return builder
