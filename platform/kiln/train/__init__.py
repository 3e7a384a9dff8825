"""Training on Ray Train V2: `run_job(spec, view)` trains and registers a job spec.

Names are imported lazily so that `kiln.train.amp` and friends load without Ray."""

from typing import Any

__all__ = ["TrainOutcome", "new_run_name", "run_job"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kiln.train import runner

        return getattr(runner, name)
    raise AttributeError(name)
