"""What a serving config may say to Kiln's application builders (`args`, `user_config`).

applications:
- name: digits-cnn                       # the model's name in /v2/models/{name}
  route_prefix: /v2/models/digits-cnn
  import_path: kiln.serve:model_app
  args: {model: digits-cnn@production}   # ModelArgs
  deployments:
  - name: ModelDeployment
    user_config: {max_batch_size: 16, batch_wait_ms: 2}   # ModelUserConfig; changes in place
"""

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
)

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


class Shadow(BaseModel):
    """A copy of each answered request (or a sampled share) sent to another model application
    after the answer is on its way: its answer is compared with the primary's, counted in
    metrics, and never returned."""

    model_config = ConfigDict(extra="forbid")

    application: str = Field(description="the shadow's model application, e.g. digits-mlp-shadow")
    share: float = Field(1.0, gt=0, le=1, description="the share of requests copied")
    timeout_s: PositiveFloat = Field(5.0, description="a slower shadow answer counts as failed")


class Traffic(BaseModel):
    """A rollout on one model endpoint. A request that names no version goes to an arm of
    `split`: an alias of the endpoint's model (followed as it moves) or a version number.
    Without `sticky_header` each request draws its arm with probability weight / total (a
    canary); with it, a hash of the header's value picks the arm, so one user stays on one arm
    while the weights stay (an A/B test). A request without the header draws at random.
    `shadow` mirrors requests to another application, with or without a split."""

    model_config = ConfigDict(extra="forbid")

    split: dict[str, NonNegativeFloat] | None = Field(
        None,
        min_length=1,
        description="arm (alias or version) -> weight, e.g. {production: 90, candidate: 10}",
    )
    sticky_header: str | None = Field(None, description="e.g. x-user-id: one arm per value")
    shadow: Shadow | None = None

    @field_validator("split", mode="before")
    @classmethod
    def _arms_are_names(cls, split: Any) -> Any:  # YAML reads `2: 10` with an integer key
        return (
            {str(arm): weight for arm, weight in split.items()}
            if isinstance(split, dict)
            else split
        )

    @field_validator("split")
    @classmethod
    def _some_weight(cls, split: dict[str, float] | None) -> dict[str, float] | None:
        if split is not None and not any(split.values()):
            raise ValueError("every weight is 0: give at least one arm a weight")
        return split


class Drift(BaseModel):
    """Live inputs and outputs compared with the version's training reference (PSI and KS
    per feature and for the output, as metrics; kiln.serve.replica.drift)."""

    model_config = ConfigDict(extra="forbid")

    window: PositiveInt = Field(2000, description="the last rows compared")
    share: float = Field(1.0, gt=0, le=1, description="the share of requests kept")
    min_rows: PositiveInt = Field(200, description="a smaller window exports nothing")


class EndpointUserConfig(Batching):
    """What every Kiln deployment's `user_config` holds: batching, a rollout, and the share of
    answers logged (errors always are); all changed in place, without a restart."""

    traffic: Traffic | None = None
    access_log_share: float = Field(
        0.01, ge=0, le=1, description="the share of successful answers logged (JSON lines)"
    )


class ModelUserConfig(EndpointUserConfig):
    """A model deployment's `user_config`, with drift tracking (`drift: null` turns it off)."""

    drift: Drift | None = Drift()


class RecommendUserConfig(EndpointUserConfig):
    """A recommendation deployment's `user_config`. A rollout's arm is drawn by a hash of the
    user id (always sticky: a user sees one arm, and the events the user posts count for
    it), so its traffic takes a split only."""

    @field_validator("traffic")
    @classmethod
    def _split_only(cls, traffic: Traffic | None) -> Traffic | None:
        if traffic is not None and (traffic.shadow or traffic.sticky_header or not traffic.split):
            raise ValueError(
                "a recommendation rollout takes a split only: arms are assigned by user id"
                " (no sticky_header) and there is no shadow"
            )
        return traffic


INDEX_APP = "kiln.serve:index_app"


class IndexArgs(BaseModel):
    """`kiln.serve:index_app`: the server-level routes, and the gRPC gateway."""

    model_config = ConfigDict(extra="forbid")

    grpc_gateway_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="a gRPC port where calls need no `application` metadata: each goes to the "
        "model its message names (Triton's clients' default port is 8001); needs grpc_options",
    )
    max_body_bytes: PositiveInt = Field(
        64 * 2**20,
        description="larger KServe V1 bodies get 413 here (each model's own limit applies too)",
    )


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
    max_body_bytes: PositiveInt = Field(4 * 2**20, description="larger event bodies get 413")
    api_keys_file: str | None = None
    conversions: list[str] = Field(
        ["click"],
        description="event types that count as a conversion of the user's rollout arm",
    )
