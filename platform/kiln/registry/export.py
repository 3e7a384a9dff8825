"""Exporting a registered model to ONNX or TorchScript, with a dynamic batch dimension."""

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from kiln.errors import KilnError
from kiln.registry.loading import LoadedModel

FORMATS = ("onnx", "torchscript")


def example_input(loaded: LoadedModel, batch: int = 2) -> torch.Tensor:
    spec = loaded.card["inputs"][0]
    shape = [batch, *spec["shape"][1:]]
    if spec["datatype"] == "INT64":
        return torch.ones(shape, dtype=torch.int64)
    return torch.zeros(shape, dtype=torch.float32)


def export_model(loaded: LoadedModel, format: str, output: Path) -> int:
    if format not in FORMATS:
        raise KilnError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    example = example_input(loaded)
    module = loaded.module.eval()
    if format == "torchscript":
        with torch.inference_mode():
            traced = torch.jit.trace(module, example)
        traced.save(str(output))
    else:
        _onnx(module, example, output)
    return output.stat().st_size


def _onnx(module: torch.nn.Module, example: torch.Tensor, output: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise KilnError("ONNX export needs the export extra: pip install 'kiln[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise KilnError("the ONNX exporter returned nothing")
    program.save(str(output))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notes to torch's developers (torchvision's operators skipped where it is
    not installed, deprecations inside torch.export): nothing an exporting user can act on.
    Its errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
