"""Kiln's Ray Serve applications, named by `import_path` in a serving config:

    kiln.serve:model_app       one model under /v2/models/{name} (the application's name)
    kiln.serve:index_app       /, /v2, /v2/health/live|ready, /docs, 404s for unknown models,
                               and KServe V1's /v1/models/{name}[:predict] for every model
    kiln.serve:recommend_app   /v1/recommend/{user_id} and /v1/events (a two-tower model, Redis)

Each model is its own application, so that a request crosses one hop (proxy to the model's
replica), and each model scales, upgrades and fails on its own, as KServe's InferenceServices do.
Over gRPC, the same applications answer `inference.GRPCInferenceService` (grpc_service.py) when
the serving config's grpc_options name its servicer.
"""

import logging
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from kiln.errors import ServeError
from kiln.features import AsyncFeatureStore, FeatureStore, connect, connect_async
from kiln.features.breaker import CircuitBreaker
from kiln.registry import ModelRegistry
from kiln.serve.config import (
    MODEL_DEPLOYMENT,
    RECOMMEND_DEPLOYMENT,
    IndexArgs,
    ModelArgs,
    ModelUserConfig,
    RecommendArgs,
    RecommendUserConfig,
)
from kiln.serve.replica.api import index_api, model_api
from kiln.serve.replica.auth import ApiKeys
from kiln.serve.replica.endpoint import ModelEndpoint
from kiln.serve.replica.grpc_gateway import start_gateway
from kiln.serve.replica.grpc_service import IndexService, ModelService
from kiln.serve.replica.metrics import EndpointMetrics, RecommendMetrics
from kiln.serve.replica.predictor import Recommender
from kiln.serve.replica.protocol import InferenceRequest
from kiln.serve.replica.recommend import RecommendEndpoint, recommend_api
from kiln.serve.replica.relay import ModelRelay
from kiln.serve.replica.served import served_models
from kiln.settings import get_settings

log = logging.getLogger("ray.serve")


def open_endpoint(
    config: ModelArgs | RecommendArgs, threads: int, versions_cached: int = 2
) -> tuple[ModelEndpoint, ApiKeys]:
    """What every model deployment starts with: its threads, its API keys (warning when there
    are none) and the endpoint following its model reference."""
    torch.set_num_threads(threads)  # replicas share the node's cores
    name = serve.get_replica_context().app_name
    keys = ApiKeys.load(config.api_keys_file)
    if keys.open:
        log.warning(f"{name}: no API keys configured; the endpoint is open to anyone")
    endpoint = ModelEndpoint(
        name,
        config.model,
        ModelRegistry.open(config.registry),
        EndpointMetrics(name),
        config.watch_interval_s,
        versions_cached,
    )
    return endpoint, keys


@serve.deployment(
    name=MODEL_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=32,
    user_config=ModelUserConfig().model_dump(),
)
@serve.ingress()
class ModelDeployment(ModelService):  # ModelService: the same model over gRPC
    def __init__(self, args: dict[str, Any]):
        config = ModelArgs.model_validate(args)
        self.endpoint, self.keys = open_endpoint(
            config, config.torch_threads, config.versions_cached
        )
        self.max_body_bytes = config.max_body_bytes

    def __serve_build_asgi_app__(self) -> FastAPI:
        return model_api(self.endpoint, self.keys, self.max_body_bytes)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ModelUserConfig.model_validate(user_config)
        self.endpoint.reconfigure(config)
        self.endpoint.set_drift(config.drift)

    async def shadow_predict(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Another endpoint's copy of a request it answered (its `traffic.shadow`): the
        outputs, compared there and never returned to a client."""
        _, _, outputs = await self.endpoint.predict(request, mirror=False)
        return outputs

    def __del__(self) -> None:
        if endpoint := getattr(self, "endpoint", None):  # None: __init__ failed
            endpoint.stop()


@serve.deployment(name="Index", ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=64)
@serve.ingress()
class IndexDeployment(IndexService):
    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        config = IndexArgs.model_validate(args)
        self.max_body_bytes = config.max_body_bytes
        self.relay = ModelRelay()
        self.gateway = None
        if config.grpc_gateway_port is not None:
            index = serve.get_replica_context().app_name
            self.gateway = await start_gateway(config.grpc_gateway_port, index)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return index_api(served_models, self.relay.predict_v1, self.max_body_bytes)

    async def __del__(self) -> None:  # Serve awaits it when the replica stops
        if gateway := getattr(self, "gateway", None):
            await gateway.stop(grace=5)  # calls in flight finish
        if relay := getattr(self, "relay", None):
            await relay.close()


def model_app(args: dict[str, Any]) -> Application:
    ModelArgs.model_validate(args)  # a wrong config fails when deployed, not in every replica
    return ModelDeployment.bind(args)  # type: ignore[attr-defined]


def index_app(args: dict[str, Any] | None = None) -> Application:
    IndexArgs.model_validate(args or {})
    return IndexDeployment.bind(args or {})  # type: ignore[attr-defined]


@serve.deployment(
    name=RECOMMEND_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=32,
    user_config=RecommendUserConfig().model_dump(),
)
@serve.ingress()
class RecommendDeployment:
    def __init__(self, args: dict[str, Any]):
        config = RecommendArgs.model_validate(args)
        model, self.keys = open_endpoint(config, threads=1)
        self.max_k, self.max_body_bytes = config.max_k, config.max_body_bytes
        self.relay = ModelRelay()  # KServe V1 under /v1, when this app owns it
        url = config.redis_url or get_settings().redis_url
        if not url:
            raise ServeError("no Redis: set redis_url or KILN_REDIS_URL (kiln serve embeds one)")
        if not isinstance(model.current, Recommender):
            raise ServeError(
                f"{config.model} is a {model.current.card['task']} model, not a recommender"
            )
        layout = FeatureStore(  # its blocking client only purges a replaced version's vectors
            connect(url, config.redis_timeout_s),
            model.current.history_len,
            config.namespace,
            config.vector_ttl_s,
            config.history_ttl_s,
        )
        store = AsyncFeatureStore(layout, connect_async(url, config.redis_timeout_s))
        breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s)
        self.endpoint = RecommendEndpoint(
            model, store, breaker, RecommendMetrics(model.name), tuple(config.conversions)
        )
        model.on_switch = self.endpoint.on_switch
        model.on_load = RecommendEndpoint.prepare
        RecommendEndpoint.prepare(model.current)

    def __serve_build_asgi_app__(self) -> FastAPI:
        relay_v1 = self.relay.predict_v1
        return recommend_api(
            self.endpoint, self.keys, self.max_k, self.max_body_bytes, served_models, relay_v1
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = RecommendUserConfig.model_validate(user_config)
        self.endpoint.set_batching(config)  # the recommendations' batches
        self.endpoint.model_endpoint.reconfigure(config)

    async def __del__(self) -> None:  # Serve awaits it when the replica stops
        if endpoint := getattr(self, "endpoint", None):  # None: __init__ failed
            endpoint.model_endpoint.stop()
        if relay := getattr(self, "relay", None):
            await relay.close()


def recommend_app(args: dict[str, Any]) -> Application:
    RecommendArgs.model_validate(args)
    return RecommendDeployment.bind(args)  # type: ignore[attr-defined]
