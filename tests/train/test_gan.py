"""The GAN family under Ray Train with 2 DDP workers: quality improves, samples are registered."""

import pytest

from kiln.metrics.generation import frechet_distance
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.train import run_job
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_gan_fid_falls_and_samples_are_registered():
    spec = load_spec(ROOT / "jobs/digits-gan.yaml", ["train.epochs=24"])
    assert spec.scaling.num_workers == 2
    outcome = run_job(spec, quiet_view(spec))
    fid = [h["val_fid"] for h in outcome.history]
    print(f"\nGAN val_fid by epoch: {[round(f, 1) for f in fid]}")
    assert fid[-1] < fid[0]
    assert min(fid) < 0.6 * fid[0]
    registry = ModelRegistry.open()
    version = registry.resolve(f"{outcome.model}@{outcome.version}")
    assert registry.read(version, "samples.png").startswith(b"\x89PNG")
    card = registry.read_json(version, "model.json")
    assert card["inputs"][0] == {"name": "latent", "datatype": "FP32", "shape": [-1, 32]}
    generator = load_model(registry, version.ref).module
    import torch

    assert generator(torch.randn(3, 32)).shape == (3, 1, 8, 8)


def test_frechet_distance_of_known_gaussians():
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 2))
    b = rng.normal(loc=[3.0, 0.0], size=(20000, 2))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(9.0, rel=0.03)  # means 3 apart, same covariance
