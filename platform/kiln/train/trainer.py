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
(tests/train/test_trainer.py fails if it changes). Its default backend config is
kiln.train.backend's, which spares the controller torch's import; the rest is Ray's own.
"""

from typing import Any

from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)
from ray.train.v2.torch.torch_trainer import TorchTrainer  # ray.train.torch's, under Train V2

from kiln.train.backend import TorchWorkersConfig


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args: Any, watch_placement_groups: bool = True, **kwargs: Any):
        """`watch_placement_groups`: start Ray Train's placement-group cleaner (it needs the
        State API: pass False on a cluster without Ray's dashboard)."""
        self.watch_placement_groups = watch_placement_groups
        kwargs.setdefault("torch_config", TorchWorkersConfig())  # a controller without torch
        super().__init__(*args, **kwargs)

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
