"""Mixed precision on a GPU: Kiln's precision policy (`kiln.train.amp`) on its CNN, fp32 vs
bf16 autocast vs fp16 autocast with a GradScaler, same data and seed. Needs CUDA; without it
the benchmark says so and writes nothing.

Two workloads: the digits CNN as shipped (tiny: launch overhead dominates), and a wide CNN on
the digits upsampled to 32x32 with batch 512 (enough work for tensor cores to matter).
"""

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kiln import data as datasets
from kiln import models
from kiln.schema import DataSchema
from kiln.spec import DataSpec, ModelSpec
from kiln.train import amp
from tests.evaluation import evaluate

OUT = Path(__file__).resolve().parents[2] / "bench-results" / "amp.json"
WORKLOADS = {
    "digits-cnn 8x8, batch 64": (8, 64, 8, {"channels": [32, 64], "hidden": 128}),
    "wide cnn 32x32, batch 512": (32, 512, 40, {"channels": [128, 256, 512], "hidden": 512}),
}


def run(size: int, batch: int, epochs: int, params: dict, choice: str) -> dict[str, float]:
    device = torch.device("cuda")
    data = datasets.build(DataSpec(name="digits"), "classification")
    x_train, x_val = (_resize(torch.as_tensor(x), size) for x in (data.x_train, data.x_val))
    schema = DataSchema(**{**data.schema.to_json(), "input_shape": [1, size, size]})
    torch.manual_seed(0)
    model = models.create(ModelSpec(family="cnn", params=params), schema).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    dtype = amp.precision(choice, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    x, y = x_train.to(device), torch.as_tensor(data.y_train).to(device)
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        tick = time.perf_counter()
        model.train()
        for start in range(0, len(x), batch):
            with amp.autocast(device, dtype):
                loss = F.cross_entropy(
                    model(x[start : start + batch]).float(), y[start : start + batch]
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - tick)
    accuracy = evaluate(model.cpu(), x_val.numpy(), data.y_val, schema)["val_accuracy"]
    return {
        "dtype": str(dtype),
        "epoch_ms": 1000 * statistics.median(times[1:]),
        "val_accuracy": accuracy,
    }


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear")


def main() -> None:
    if not torch.cuda.is_available():
        print("bench_amp: no CUDA device here; skipped")
        return
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": {}}
    for name, (size, batch, epochs, params) in WORKLOADS.items():
        for choice in ("fp32", "bf16", "fp16"):
            results["runs"][f"{name} / {choice}"] = run(size, batch, epochs, params, choice)
            print(name, choice, results["runs"][f"{name} / {choice}"], flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
