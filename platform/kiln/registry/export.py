"""Exporting a registered model to ONNX or TorchScript, with a dynamic batch dimension, checked:
the written file must answer another batch size as the model does. Tracing records one batch's
Python (a `len(x)`, an `if` on a tensor), and a user's own network can bake its example's batch
size into the file without an error; a runtime would then fail, or answer wrongly, on any other."""

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.registry.loading import LoadedModel

FORMATS = ("onnx", "torchscript")


def example_input(loaded: LoadedModel, batch: int = 2) -> torch.Tensor:
    """Ids of 1 (0 may be padding), or values in [0, 1): a check at zeros would pass a graph
    that traced away a branch on the values."""
    spec = loaded.card["inputs"][0]
    shape = [batch, *spec["shape"][1:]]
    if spec["datatype"] == "INT64":
        return torch.ones(shape, dtype=torch.int64)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def export_model(loaded: LoadedModel, format: str, output: Path) -> int:
    if format not in FORMATS:
        raise KilnError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    module, example = loaded.module.eval(), example_input(loaded)
    if format == "torchscript":
        with torch.inference_mode(), _quiet_exporter():  # TorchScript is deprecated in torch
            traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(output))
    else:
        _onnx(module, example, output)
    check_batch_sizes(module, example_input(loaded, batch=CHECK_BATCH), format, output)
    return output.stat().st_size


CHECK_BATCH = 3  # the export's example has 2


def check_batch_sizes(module: torch.nn.Module, x: torch.Tensor, format: str, output: Path) -> None:
    """The written file answers `x` (another batch size than the export's example) as the
    module does, else it is removed and the export fails in one line."""
    with torch.inference_mode():
        expected = module(x).numpy()
    try:
        got = _run_exported(format, output, x)
        problem = None if np.allclose(got, expected, rtol=1e-3, atol=1e-4) else "other answers"
    except Exception as e:  # the runtime's own error: a reshape to the example's batch, ...
        problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    if problem:
        output.unlink(missing_ok=True)
        raise KilnError(
            f"the {format} export answers a batch of {len(x)} differently from the model "
            f"({problem}): its forward fixes the batch size of the export's example (a len(x) "
            "traced as a number, a Python branch on a tensor's values). Use x.shape[0] or -1 "
            "in reshapes and torch.where for branches; nothing written"
        )


def _run_exported(format: str, output: Path, x: torch.Tensor) -> np.ndarray:
    if format == "torchscript":
        with torch.inference_mode(), _quiet_exporter():
            return torch.jit.load(str(output))(x).numpy()
    from onnx.reference import ReferenceEvaluator

    answers = ReferenceEvaluator(str(output)).run(None, {"input": x.numpy()})
    return np.asarray(cast(list, answers)[0])  # a list, given no output names


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
    not installed, deprecations inside torch.export, an RNN's flat weights "assigned during
    export"): nothing an exporting user can act on. Its errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the export is checked
            yield
    finally:
        logger.setLevel(level)
