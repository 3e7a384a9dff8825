"""What a run's controller and workers are handed through Ray runtime envs.

Ray Train hands the variables it reads (`RAY_TRAIN_*` and a few of Ray's: its
`ENV_VARS_TO_PROPAGATE`) that are set in the process calling fit() to the run's controller
through the controller's runtime env, adding `RAY_WARN_BLOCKING_GET_INSIDE_ASYNC=0`, and those
set in the controller to each worker through theirs. A process with a runtime env is started
by Ray through a second Python that sets it up (`setup_worker.py`), and the actors that a
controller creates inherit its runtime env (the synchronisation actor). On the one-machine
cluster that `kiln train` and `kiln tune` start (`train_env_inherited`, kiln.cluster.connect),
every process inherits the environment the cluster was started with, which holds these
variables (Kiln's defaults among them), so none is handed: measured there, digits-cnn's run
used 17.6 s of CPU by its first epoch against 19.5 s (medians of three runs each, README).
Elsewhere the variables are handed as Ray does.
"""

from typing import Any

from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
from ray.train.v2._internal.constants import (
    DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
    get_env_vars_to_propagate,
)
from ray.train.v2._internal.execution.worker_group import WorkerGroup

from kiln.settings import get_settings


def controller_runtime_env() -> dict[str, Any]:
    """The runtime env of a run's controller (Ray 2.60's DataParallelTrainer's, or none)."""
    if get_settings().train_env_inherited:
        return {}
    env_vars = get_env_vars_to_propagate()
    env_vars.setdefault(
        RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE
    )
    return {"env_vars": env_vars}


class InheritingWorkerGroup(WorkerGroup):
    """Ray Train's worker group, whose workers get only the run's `worker_runtime_env` where
    they inherit Ray Train's variables."""

    @staticmethod
    def _get_worker_runtime_env(custom_runtime_env: Any) -> Any:
        if get_settings().train_env_inherited:
            return dict(custom_runtime_env)
        return WorkerGroup._get_worker_runtime_env(custom_runtime_env)
