"""Kiln's GPU paths, run for real where a CUDA device is (tests/gpu/run_on_gpu.sh, on the GPU
machine); skipped elsewhere, CI included.

digits-cnn on one GPU worker, as `kiln train jobs/digits-cnn.yaml --set scaling.use_gpu=true
--set scaling.num_workers=1` runs it: bf16 autocast (precision auto), checkpoints written from
CUDA tensors, and the registered weights read back on the CPU, as a CPU replica serves them.
"""

import pytest
import torch

from kiln import data as datasets
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.train import run_job
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view
from tests.evaluation import evaluate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: tests/gpu/run_on_gpu.sh runs these on a GPU machine",
    ),
    pytest.mark.usefixtures("ray_cluster"),
]

ON_ONE_GPU = ["scaling.use_gpu=true", "scaling.num_workers=1"]


def train(*overrides: str, run_name: str | None = None):
    spec = load_spec(ROOT / "jobs" / "digits-cnn.yaml", [*ON_ONE_GPU, *overrides])
    return spec, run_job(spec, quiet_view(spec), run_name=run_name)


@pytest.fixture(scope="module")
def on_gpu():
    return train()


def test_digits_cnn_on_a_gpu_reaches_the_cpu_runs_accuracy(on_gpu):
    _, outcome = on_gpu
    assert outcome.metrics["val_accuracy"] >= 0.97, outcome.metrics  # tests/train's CPU bar


def test_weights_trained_on_the_gpu_serve_on_the_cpu_with_the_same_accuracy(on_gpu):
    spec, outcome = on_gpu
    loaded = load_model(ModelRegistry.open(), f"{outcome.model}@{outcome.version}")
    assert next(loaded.module.parameters()).device.type == "cpu"
    data = datasets.build(spec.data, spec.task)
    metrics = evaluate(loaded.module, data.x_val, data.y_val, data.schema)
    # The registered figure was measured under bf16 autocast, this one in fp32.
    assert metrics["val_accuracy"] == pytest.approx(outcome.metrics["val_accuracy"], abs=0.01)


def test_bf16_autocast_and_fp32_reach_the_same_accuracy(on_gpu):
    _, bf16 = on_gpu
    _, fp32 = train("train.precision=fp32")
    assert fp32.metrics["val_accuracy"] == pytest.approx(bf16.metrics["val_accuracy"], abs=0.02)


def test_a_run_checkpointed_on_the_gpu_resumes_on_the_cpu_and_back(ray_cluster):
    budget = ["train.early_stopping=null"]
    _, first = train(*budget, "train.epochs=2", run_name="gpu-cpu-gpu")
    _, on_cpu = train(*budget, "train.epochs=4", "scaling.use_gpu=false", run_name="gpu-cpu-gpu")
    _, again = train(*budget, "train.epochs=6", run_name="gpu-cpu-gpu")
    assert [len(o.history) for o in (first, on_cpu, again)] == [2, 4, 6]
    assert again.metrics["val_accuracy"] >= 0.95, again.metrics
