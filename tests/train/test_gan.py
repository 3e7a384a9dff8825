"""The GAN family under Ray Train with 2 DDP workers: quality improves, samples are registered."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from kiln.metrics.generation import frechet_distance
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.train import run_job
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_conditional_gan_draws_the_digit_asked_for_and_registers_its_quality():
    """The shipped job at a test budget. Measured here: val_requested 0.96 at epoch 20 of a
    60-epoch run; CI holds 0.5 (chance is 0.1)."""
    spec = load_spec(ROOT / "jobs/digits-gan.yaml", ["train.epochs=20"])
    assert spec.scaling.num_workers == 2 and spec.model.params["conditional"]
    outcome = run_job(spec, quiet_view(spec))
    fid = [h["val_fid"] for h in outcome.history]
    requested = [h["val_requested"] for h in outcome.history]
    print(f"\nGAN val_fid by epoch: {[round(f, 1) for f in fid]}")
    print(f"GAN val_requested by epoch: {[round(r, 2) for r in requested]}")
    assert min(fid) < 0.6 * fid[0]
    assert outcome.metrics["val_requested"] >= 0.5
    registry = ModelRegistry.open()
    version = registry.resolve(f"{outcome.model}@{outcome.version}")
    grid = Image.open(io.BytesIO(registry.read(version, "samples.png")))
    assert grid.format == "PNG"
    per_class = json.loads(registry.read(version, "quality.json"))["requested_by_class"]
    assert sorted(per_class) == [str(c) for c in range(10)]
    assert np.mean(list(per_class.values())) == pytest.approx(outcome.metrics["val_requested"])
    card = registry.read_json(version, "model.json")
    assert card["inputs"][0] == {"name": "latent", "datatype": "FP32", "shape": [-1, 32]}
    gan = load_model(registry, version.ref).module
    z = torch.randn(3, 32)
    assert gan(z, torch.tensor([1, 2, 3])).shape == (3, 1, 8, 8)


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 2))
    b = rng.normal(loc=[3.0, 0.0], size=(20000, 2))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(9.0, rel=0.03)  # means 3 apart, same covariance
