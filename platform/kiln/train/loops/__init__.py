"""Per-worker training loops, by task. Each module has `train_loop_per_worker(config)` and may
have `prepare(spec, dataset) -> dict`: driver-side work whose result every worker receives
(in `config["extras"]`), such as the GAN's evaluation classifier."""

import importlib
from types import ModuleType

LOOPS = {
    "classification": "supervised",
    "regression": "supervised",
    "forecasting": "supervised",
    "generation": "gan",
    "recommendation": "recommend",
}


def for_task(task: str) -> ModuleType:
    return importlib.import_module(f"kiln.train.loops.{LOOPS[task]}")
