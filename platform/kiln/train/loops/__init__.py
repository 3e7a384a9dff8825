"""Per-worker training loops. Each module has `train_loop_per_worker(config)` and may have
`prepare(spec, dataset) -> dict`: driver-side work whose result every worker receives (in
`config["extras"]`), such as the GAN's evaluation classifier. A task names its loop
(`kiln.tasks`); `for_task` imports it."""

import importlib
from types import ModuleType

from kiln import tasks


def for_task(task: str) -> ModuleType:
    return importlib.import_module(tasks.get(task).loop)
