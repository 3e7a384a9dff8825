"""Every model family exported to TorchScript and ONNX answers as the original does, at another
batch size than the export's example, and exports without a warning to the user; a network
whose export would fix the example's batch size is refused in one line, and nothing is written."""

import warnings

import numpy as np
import pytest
import torch

from kiln import models
from kiln.errors import KilnError, SpecError
from kiln.registry.export import FORMATS, export_model
from kiln.registry.loading import LoadedModel
from kiln.spec import ModelSpec
from tests.models.test_models import INPUTS, example


def first_input(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The family's model on the first input kind it accepts, and a batch of 5 of it."""
    for schema in INPUTS.values():
        try:
            model = models.create(ModelSpec(family=family), schema).eval()
        except SpecError:
            continue
        latent = getattr(model, "latent_dim", None)  # a generator maps noise to data
        return model, torch.randn(5, latent) if latent else example(schema, batch=5)
    raise AssertionError(f"{family} takes no input")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", models.list_models())
def test_an_export_answers_like_the_original_at_any_batch_size(family, fmt, tmp_path):
    model, x = first_input(family)
    datatype = "INT64" if x.dtype == torch.int64 else "FP32"
    card = {"inputs": [{"name": "input", "datatype": datatype, "shape": [-1, *x.shape[1:]]}]}
    path = tmp_path / f"model.{fmt}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_model(LoadedModel(version=None, card=card, module=model), fmt, path)
    assert not [str(w.message) for w in caught]
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(path))(x).detach().numpy()
    else:
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


class FixesItsBatch(torch.nn.Module):
    """A user's network as many are written: `len(x)` is a number when traced."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 6)

    def forward(self, x):
        return self.linear(x).view(len(x), 2, 3).sum(dim=2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_that_fixes_the_batch_size_is_refused_and_not_written(fmt, tmp_path):
    card = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]}
    path = tmp_path / f"model.{fmt}"
    loaded = LoadedModel(version=None, card=card, module=FixesItsBatch())
    with pytest.raises(KilnError, match=f"the {fmt} export answers a batch of 3 differently"):
        export_model(loaded, fmt, path)
    assert not path.exists()
