"""Ray Train's `TorchTrainer`, less the actors a run has no work for.

Ray Train V2 starts, for every run, besides its controller and workers:
- a dataset manager (`DatasetsCallback`), an actor process that imports Ray Data, even when
  the run has no Ray Data dataset (Kiln's in-memory path hands the workers one object);
- a placement-group cleaner, a detached actor process that asks Ray's State API every second
  whether the controller lives, to remove its placement group if it died. The State API is
  served by Ray's dashboard: on a cluster without one, the cleaner logs a failed query every
  second, never cleans, and outlives the run.
On 2 cores each such process takes about a second of CPU while the run's workers start
(their imports: 1.6 s and 2.5 s of wall time there). Ray offers no setting for either, so this
class filters them out of `_create_default_callbacks`, a private method of Ray 2.60
(tests/train/test_trainer.py fails if it changes).

A third is Ray's autoscaling coordinator, which the run's scaling policy tells what the
workers need: with `request_autoscaling=False` (a cluster that cannot grow) a run with no Ray
Data dataset and a fixed worker count takes kiln.train.scaling's policy instead, swapped in
`_initialize_and_run_controller`, also private.

It is Ray's `TorchTrainer` built on Ray's `DataParallelTrainer` with kiln.train.backend's
config, so that neither the controller nor the process that builds the trainer (the driver, a
search's trial) imports torch: `ray.train.torch`'s modules import it, a second of CPU that
only the workers need. Its controller is Ray's with a method to take the run's events
(kiln.train.events), created by `_initialize_and_run_controller` (Ray 2.60's own, with that
class) so that the caller has its handle from the start, and whose runtime env is
kiln.train.runtime_env's. The rest is Ray's own.
"""

import threading
from typing import Any

import ray
from ray._raylet import RAY_NODE_ID_KEY  # type: ignore[attr-defined]
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy, ScalingPolicy
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from kiln.train.backend import TorchWorkersConfig
from kiln.train.events import EVENTS_GROUP, EventsController, RunEvents
from kiln.train.mistakes import MistakesEndTheRun
from kiln.train.runtime_env import controller_runtime_env
from kiln.train.scaling import FixedWorkersNoRequests


class LeanTorchTrainer(DataParallelTrainer):
    def __init__(
        self,
        train_loop_per_worker: Any,
        *,
        torch_config: TorchWorkersConfig | None = None,
        watch_placement_groups: bool = True,
        request_autoscaling: bool = True,
        reports_in_flight: int | None = None,
        **kwargs: Any,
    ):
        """`watch_placement_groups`: start Ray Train's placement-group cleaner (it needs the
        State API: pass False on a cluster without Ray's dashboard). `request_autoscaling`:
        False sends Ray's autoscaling coordinator nothing when the run has no Ray Data dataset
        and a fixed number of workers. The run's reports and failures are read from
        `self.events` (kiln.train.events; at most `reports_in_flight` untaken)."""
        self.watch_placement_groups = watch_placement_groups
        self.request_autoscaling = request_autoscaling
        self.events = RunEvents(reports_in_flight)
        config = torch_config or TorchWorkersConfig()
        super().__init__(train_loop_per_worker, backend_config=config, **kwargs)
        run_config: Any = self.run_config  # Train V2's (mypy reads ray.train's V1 RunConfig)
        run_config.callbacks = [*run_config.callbacks, self.events.forwarder]

    def _initialize_and_run_controller(self, **controller_kwargs: Any):
        """Ray's own (Ray 2.60's DataParallelTrainer), with Kiln's controller, attached to
        `self.events` as it is created, the scaling policy of `lean_policy`, and a failure
        policy that retries no mistake (kiln.train.mistakes)."""
        controller_kwargs["scaling_policy"] = self.lean_policy(controller_kwargs["scaling_policy"])
        ray_policy = controller_kwargs["failure_policy"]
        controller_kwargs["failure_policy"] = MistakesEndTheRun(ray_policy.failure_config)
        runtime_env = controller_runtime_env()
        actor: Any = ray.remote  # its stubs lack concurrency_groups
        controller_class = actor(
            num_cpus=0,
            label_selector={  # on the node of the process that runs fit()
                RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()
            },
            concurrency_groups={EVENTS_GROUP: 1},
            **({"runtime_env": runtime_env} if runtime_env else {}),
        )(EventsController)
        controller = controller_class.remote(**controller_kwargs)
        self.events.attach(controller)
        if threading.current_thread() is threading.main_thread():
            self._register_sigint_handler(controller)
        try:
            ray.get(controller.run.remote())
        finally:
            self.events.finish()
        return ray.get(controller.get_result.remote())

    def lean_policy(self, policy: ScalingPolicy) -> ScalingPolicy:
        """Ray's `policy`, or kiln.train.scaling's where it would only talk to a coordinator
        that has nothing to do: requests off, no Ray Data dataset, a fixed worker count."""
        if self.request_autoscaling or self.datasets or type(policy) is not FixedScalingPolicy:
            return policy
        return FixedWorkersNoRequests(policy.scaling_config)

    def _create_default_callbacks(self) -> list:
        return [c for c in super()._create_default_callbacks() if not self._idle(c)]

    def _idle(self, callback: object) -> bool:
        if isinstance(callback, DatasetsCallback):
            return not self.datasets
        if isinstance(callback, PlacementGroupCleanerCallback):
            return not self.watch_placement_groups
        return False


def has_state_api() -> bool:
    """Whether the connected cluster serves Ray's State API (its dashboard runs). Right in the
    driver only: a worker process reports the default address whether or not it is there.
    A driver that cannot tell (Ray Client) keeps Ray's default, the cleaner."""
    from ray._private.worker import get_dashboard_url

    try:
        return bool(get_dashboard_url())
    except Exception:
        return True
