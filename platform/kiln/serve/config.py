"""What a serving config may say to Kiln's application builders (`args`, `user_config`).

applications:
- name: digits-cnn                       # the model's name in /v2/models/{name}
  route_prefix: /v2/models/digits-cnn
  import_path: kiln.serve:model_app
  args: {model: digits-cnn@production}   # ModelArgs
  deployments:
  - name: ModelDeployment
    user_config: {max_batch_size: 16, batch_wait_ms: 2}   # Batching; changes in place
"""

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

MODEL_DEPLOYMENT = "ModelDeployment"
MODEL_ROUTE = "/v2/models/"


class ModelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="NAME@ALIAS (followed as it moves) or NAME@VERSION (pinned)")
    registry: str | None = Field(None, description="registry URI; default KILN_REGISTRY")
    watch_interval_s: PositiveFloat = Field(2.0, description="how often the alias is re-read")
    max_body_bytes: PositiveInt = Field(4 * 2**20, description="larger request bodies get 413")
    api_keys_file: str | None = Field(None, description="bearer keys, one per line")
    versions_cached: PositiveInt = Field(2, description="other versions kept loaded")
    torch_threads: PositiveInt = Field(1, description="intra-op threads per replica")


class Batching(BaseModel):
    """The deployment's `user_config`: Serve applies a change to it without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: PositiveInt = 16  # 1 turns batching off
    # 0: a batch is whatever is queued when the model is free, so a lone request never waits
    # (bench_serve: 2 ms of waiting cost 2.3 ms at concurrency 1 and 17% throughput at 32).
    batch_wait_ms: NonNegativeFloat = 0.0


class IndexArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


RECOMMEND_DEPLOYMENT = "Recommender"


class RecommendArgs(BaseModel):
    """`kiln.serve:recommend_app`: /v1/recommend and /v1/events over a two-tower model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a two-tower model: NAME@ALIAS or NAME@VERSION")
    registry: str | None = None
    redis_url: str | None = Field(
        None, description="default KILN_REDIS_URL; kiln serve fills in its embedded Redis"
    )
    namespace: str = Field("kiln", pattern=r"^[a-z0-9_-]+$", description="key prefix in Redis")
    vector_ttl_s: PositiveFloat = Field(
        3600.0, description="a cached user vector older than this is stale"
    )
    history_ttl_s: PositiveFloat | None = Field(
        None, description="history older than this is ignored"
    )
    max_k: PositiveInt = Field(100, le=1000)
    redis_timeout_s: PositiveFloat = Field(0.05, description="per Redis call; slower is a failure")
    breaker_failures: PositiveInt = Field(
        3, description="consecutive failures that open the circuit"
    )
    breaker_reset_s: PositiveFloat = Field(2.0, description="open circuit: seconds before a retry")
    watch_interval_s: PositiveFloat = 2.0
    api_keys_file: str | None = None
