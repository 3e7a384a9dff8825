"""Named builders in the style of timm's registry: a dict plus a decorator. (Not the model
registry, `kiln.registry`, which stores trained versions.)

    MODELS = Builders("model family")
    @MODELS.register("cnn")
    def cnn(schema, *, channels=(32, 64)): ...
    MODELS.create("cnn", schema, channels=[16])

Each builder's keyword-only parameters form a pydantic model (extra="forbid"), so a spec's
`params` are type-checked, and unknown ones refused, before anything runs.
"""

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pydantic

from kiln.errors import SpecError, UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])


class Builders(Generic[F]):
    def __init__(self, kind: str, reserved: tuple[str, ...] = ()):
        """`reserved`: keyword parameters a spec sets elsewhere than in `params`."""
        self.kind = kind
        self.reserved = reserved
        self._builders: dict[str, F] = {}
        self._params: dict[str, type[pydantic.BaseModel]] = {}
        self._imports: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, imports: tuple[str, ...] = ()) -> Callable[[F], F]:
        """`imports`: heavy modules the builder imports when it runs (not at registration, so
        that processes which only unpickle its module skip them); a CLI may import them
        ahead, while it waits for something else."""

        def decorate(builder: F) -> F:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            self._params[name] = params_model(builder, skip=self.reserved)
            self._imports[name] = imports
            return builder

        return decorate

    def imports(self, name: str) -> tuple[str, ...]:
        self.get(name)
        return self._imports[name]

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> F:
        if name not in self._builders:
            raise UnknownNameError(self.kind, name, self.names())
        return self._builders[name]

    def params_model(self, name: str) -> type[pydantic.BaseModel]:
        self.get(name)
        return self._params[name]

    def accepts(self, name: str, parameter: str) -> inspect.Parameter | None:
        return inspect.signature(self.get(name)).parameters.get(parameter)

    def validate_params(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Checked and defaulted params (nested models stay models); raises ValidationError."""
        checked = self.params_model(name).model_validate(params)
        return {field: getattr(checked, field) for field in type(checked).model_fields}


def params_model(
    builder: Callable[..., Any], skip: tuple[str, ...] = ()
) -> type[pydantic.BaseModel]:
    """A pydantic model of a builder's keyword-only parameters (the ones a spec may set)."""
    fields: dict[str, Any] = {}
    for p in inspect.signature(builder).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in skip:
            continue
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, default)
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{builder.__name__}_params", __config__=config, **fields)


def import_object(path: str, field: str | None = None) -> Any:
    """The object a "package.module:attribute" path names; `field` is the spec field it came
    from, for the error."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise SpecError(f"cannot import {path}: {e}", field=field) from None
