"""Ray's Torch backend, with torch imported by the workers only.

A Train run's controller is a process of its own, and it unpickles the run's backend config
when it starts. Ray's `TorchConfig` lives in a module that imports torch, so every controller
imported torch (1.9 s on 2 cores) before it asked for its workers, which then import it again:
that second spent in the controller was on every run's path to its first epoch, and every
trial's; the driver that builds the config paid it too. What the controller does with the
backend is orchestration: pick gloo or NCCL from the workers' resources, hand them rank 0's
address, and have each join the process group. Kiln's config does the same with Ray's own
worker-side functions, imported on the workers. Anything beyond gloo and NCCL on CPUs and GPUs
(a TPU, another backend) goes to Ray's backend whole.

This module must not import torch (tests/train/test_trainer.py checks, in a fresh process,
that neither what a controller unpickles nor what a driver builds a trainer with imports it).
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray._private.ray_constants import env_integer
from ray.exceptions import GetTimeoutError
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import (
    DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
    TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
)
from ray.train.v2._internal.util import TrainingFramework

logger = logging.getLogger(__name__)


@dataclass
class TorchWorkersConfig(BackendConfig):
    """`ray.train.torch.TorchConfig`'s fields and meaning (`backend`: gloo or nccl, chosen
    from the workers' resources when None), as a config whose module the controller can
    import without torch."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return TorchWorkersBackend

    @property
    def train_func_context(self):  # wraps the train function, on the workers
        return _torch_context

    @property
    def framework(self):
        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}

    def ray_config(self) -> Any:
        from ray.train.torch.config import TorchConfig

        return TorchConfig(backend=self.backend, timeout_s=self.timeout_s)


class TorchWorkersBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: BackendConfig) -> None:
        assert isinstance(backend_config, TorchWorkersConfig)
        backend = process_group_backend(backend_config, worker_group.get_resources_per_worker())
        if backend is None:
            ray_backend().on_start(worker_group, backend_config.ray_config())
            return
        address, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env, address=address, port=port)
        size = len(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _join_process_group,
                    backend=backend,
                    world_rank=rank,
                    world_size=size,
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(size)
            ]
        )

    def on_shutdown(self, worker_group, backend_config: BackendConfig) -> None:
        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = env_integer(
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        )
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:  # as Ray's backend: the workers are being torn down anyway
            logger.warning(f"Torch process group shutdown timed out after {timeout_s} seconds")


def process_group_backend(config: TorchWorkersConfig, resources: dict[str, float]) -> str | None:
    """gloo or nccl as Ray chooses them (NCCL for workers with GPUs); None where this module
    does not set the group up itself (a TPU, another backend): Ray's backend does."""
    backend = config.backend or ("nccl" if resources.get("GPU", 0) > 0 else "gloo")
    if backend not in ("gloo", "nccl") or resources.get("TPU", 0) > 0:
        return None
    return backend


def ray_backend() -> Backend:
    from ray.train.torch.config import _TorchBackend

    return _TorchBackend()


# --- on the workers: Ray's own functions, imported there ------------------------------------


@contextlib.contextmanager
def _torch_context() -> Iterator[None]:
    from ray.train.torch.config import TorchConfigContextManager

    with TorchConfigContextManager():
        yield


def _set_env(address: str, port: int) -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    _set_torch_distributed_env_vars()  # RANK, LOCAL_RANK, WORLD_SIZE... and the device


def _join_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend, world_rank, world_size, "env://", timeout_s)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group)
