"""Hyperparameter search on Ray Tune, each trial a distributed Ray Train run of the job.

    outcome = run_search(spec, view)             # new search
    outcome = run_search(spec, view, resume=True) # continue the latest interrupted one

The Ray 2.60 pattern: a Tune *function* trainable builds and fits a `TorchTrainer` whose run
name carries the trial id (stable across trial retries); a callback on the run's controller
sends every epoch's rank-0 metrics and checkpoint path back to the trial, which reports them
to Tune and ends the run when Tune stops the trial (kiln.tune.trial). The trial
function itself reserves no CPU; its Train workers do, and concurrency is bounded by what the
cluster can hold at once, so trials never wait on each other's resources.
"""

from kiln.tune.search import SearchOutcome, run_search

__all__ = ["SearchOutcome", "run_search"]
