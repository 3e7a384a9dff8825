"""Kiln's settings, read from the environment (KILN_*) when asked for, never at import.

settings = get_settings()
settings.registry_uri      # KILN_REGISTRY, else KILN_HOME/registry
"""

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    home: str = Field(".kiln", description="local state: registry, runs, embedded services")
    registry: str | None = Field(None, description="registry URI (path, s3://, gs://)")
    storage: str | None = Field(None, description="Ray Train storage for runs and checkpoints")
    ray_address: str | None = Field(None, description="an existing Ray cluster to use")
    redis_url: str | None = Field(None, description="feature cache; default: embedded Redis")
    api_keys: str | None = Field(None, description="serving API keys, comma separated")
    api_keys_file: str | None = Field(None, description="a file of serving API keys, one a line")
    autoscaling_requests: bool = Field(
        True,
        description="Train runs tell Ray's autoscaling coordinator what their workers need; "
        "kiln train and kiln tune turn it off on the one-machine cluster they start",
    )
    train_env_inherited: bool = Field(
        False,
        description="a run's controller and workers inherit Ray Train's variables from the "
        "cluster's environment, handed no runtime env; kiln train and kiln tune turn it on on "
        "the one-machine cluster they start",
    )
    exact_retrieval_up_to: int = Field(
        20_000, description="catalogues up to this many items are searched exactly, larger by IVF"
    )

    @property
    def registry_uri(self) -> str:
        return absolute(self.registry or f"{self.home}/registry")

    @property
    def storage_uri(self) -> str:
        return absolute(self.storage or f"{self.home}/runs")


# Ray Train's controller takes a worker's report only when it polls the workers: every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default. Epochs shorter than that wait for the poll
# (digits-cnn's 0.5 s epochs took 2 s each): Kiln polls every 0.2 s unless this is set.
REPORT_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def get_settings() -> Settings:
    return Settings()


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers run elsewhere); URIs left as they are."""
    return uri if "://" in uri else str(Path(os.path.expanduser(uri)).resolve())
