"""Training on Ray Train V2: `run_job(spec, view)` trains and registers a job spec."""

from kiln.train.runner import TrainOutcome, new_run_name, run_job

__all__ = ["TrainOutcome", "new_run_name", "run_job"]
