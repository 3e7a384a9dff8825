"""Real-time recommendations: a two-tower model and the Redis feature cache behind
`GET /v1/recommend/{user_id}` and `POST /v1/events`.

A request reads the user's history and cached vector in one round trip. A fresh vector is a
`hit`; otherwise the vector is recomputed from the history (a `miss`) and written back. Events
append to the history and drop the cached vectors, so the next answer reflects them.

When Redis fails (down, slow past `redis_timeout_s`, or garbage), a circuit breaker skips it
and answers come without it (`cache: bypass`, `degraded: true`): from the request's own
`recent` items if given, else the model with the user id alone, else popularity. Events are
then refused with 503 and Retry-After so that the caller retries: none is silently lost. The
breaker retries Redis after `breaker_reset_s` and recovery needs no restart.

A rollout (`user_config.traffic.split`) assigns each user an arm by a hash of the user id
(rollout.py), so a user keeps one arm; answers say which (`arm`), requests are counted per
arm, and each event whose type is a conversion (`conversions`, default clicks) counts for the
poster's arm: `kiln rollout status recommend` compares the arms' click-through.
"""

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from ray import serve

import kiln
from kiln.errors import RequestError, ServeError
from kiln.features import AsyncFeatureStore, Event, UserFeatures
from kiln.features.breaker import CircuitBreaker
from kiln.serve.config import Batching
from kiln.serve.replica.api import (
    ERRORS,
    answer_errors_as_protocol,
    document_schemas,
    kserve_v1_routes,
)
from kiln.serve.replica.auth import ApiKeys
from kiln.serve.replica.endpoint import ModelEndpoint
from kiln.serve.replica.metrics import RecommendMetrics
from kiln.serve.replica.middleware import RequestBody
from kiln.serve.replica.predictor import Recommender
from kiln.serve.replica.protocol import describe

log = logging.getLogger("ray.serve")
T = TypeVar("T")
EVENTS = TypeAdapter(Event | list[Event])
MAX_EVENTS = 1000


class RedisUnavailable(Exception):
    pass


@dataclass
class Ask:
    """One request's ranking: its vector, or the (user id, recent items) to compute it from."""

    predictor: Recommender
    k: int
    seen: set[str]
    vector: np.ndarray | None = None
    history: tuple[str, list[str]] | None = None


class RecommendEndpoint:
    def __init__(
        self,
        model_endpoint: ModelEndpoint,
        store: AsyncFeatureStore,
        breaker: CircuitBreaker,
        metrics: RecommendMetrics,
        conversions: tuple[str, ...] = ("click",),
    ):
        self.model_endpoint = model_endpoint  # the two-tower model, following its alias
        self.store, self.breaker, self.metrics = store, breaker, metrics
        self.conversions = conversions
        self.batching = Batching()

    @property
    def predictor(self) -> Recommender:
        current = self.model_endpoint.current
        assert isinstance(current, Recommender)
        return current

    async def recommend(self, user_id: str, k: int, recent: list[str]) -> dict[str, Any]:
        start = time.perf_counter()
        arm, version = self.model_endpoint.route(None, user_id)
        predictor = await self.model_endpoint.predictor(version)
        if not isinstance(predictor, Recommender):  # deploy checks arms; an alias may move
            served = f"{predictor.name}@{predictor.version}"
            raise ServeError(f"arm {arm} serves {served}, not a recommender")
        try:
            features = await self._redis(
                "read", self.store.read, user_id, predictor.name, predictor.version
            )
            cached = True
        except RedisUnavailable:
            features, cached = UserFeatures(), False
            self.metrics.degraded.inc(tags={"model": self.model_endpoint.name, "reason": "redis"})
        self._count_features(features, cached)
        history = [i for i, _ in features.history] if features.history_state == "fresh" else []
        history += [i for i in recent if i not in history]
        seen = set(history)
        cache, cold = ("miss" if cached else "bypass"), False
        if features.vector is not None:
            cache = "hit"
            _, items = await self._rank(Ask(predictor, k, seen, vector=features.vector))
        elif predictor.knows(user_id) or history:
            latest = (user_id, history[-predictor.history_len :])
            vector, items = await self._rank(Ask(predictor, k, seen, history=latest))
            if cached:
                await self._write_back(user_id, predictor, vector)
        else:
            cold, items = True, predictor.popular_k(k, seen)
        version_tags = {"model": self.model_endpoint.name, "version": str(predictor.version)}
        self.metrics.cache.inc(tags={**version_tags, "result": cache})
        latency_ms = (time.perf_counter() - start) * 1000
        self.metrics.latency.observe(latency_ms, tags=version_tags)
        self.model_endpoint.answered(predictor.version, 200, latency_ms, arm)
        return {
            "user_id": user_id,
            "arm": arm,
            "items": [{"item_id": item, "score": round(score, 6)} for item, score in items],
            "model": predictor.name,
            "version": predictor.version,
            "cache": cache,
            "cold_start": cold,
            "degraded": not cached,
            "features": {"history": features.history_state, "vector": features.vector_state},
        }

    # --- ranking, batched across concurrent requests ---------------------------------------

    def set_batching(self, batching: Batching) -> None:
        self.batching = batching
        batched: Any = self._ranked  # serve.batch adds these setters
        batched.set_max_batch_size(batching.max_batch_size)
        batched.set_batch_wait_timeout_s(batching.batch_wait_ms / 1000)

    async def _rank(self, ask: "Ask") -> tuple[np.ndarray, list[tuple[str, float]]]:
        """The user's vector (the cached one, or the tower's) and the k items for it."""
        if self.batching.max_batch_size > 1:
            return await self._ranked(ask)
        return self._rank_now([ask])[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _ranked(self, asks: list["Ask"]) -> list[tuple[np.ndarray, list[tuple[str, float]]]]:
        return self._rank_now(asks)

    def _rank_now(self, asks: list["Ask"]) -> list[tuple[np.ndarray, list[tuple[str, float]]]]:
        """Requests that arrive together: one user-tower call for the vectors to compute and
        one search for all of them, per model version."""
        results: list[Any] = [None] * len(asks)
        for predictor in {id(a.predictor): a.predictor for a in asks}.values():
            positions = [i for i, a in enumerate(asks) if a.predictor is predictor]
            group = [asks[i] for i in positions]
            towers = [a.history for a in group if a.history is not None and a.vector is None]
            computed = iter(predictor.user_vectors(towers) if towers else [])
            vectors = np.stack(
                [a.vector if a.vector is not None else next(computed) for a in group]
            )
            ranked = predictor.top_k(vectors, max(a.k for a in group), [a.seen for a in group])
            self.model_endpoint.metrics.batched(predictor.version, len(group))
            for position, ask, vector, items in zip(positions, group, vectors, ranked, strict=True):
                results[position] = (vector, items[: ask.k])
        return results

    async def ingest(self, events: list[Event]) -> int:
        """Raises RedisUnavailable: the caller answers 503 so the client retries."""
        try:
            accepted = await self._redis("events", self.store.append_events, events)
        except RedisUnavailable:
            self.metrics.events.inc(len(events), tags={"outcome": "rejected"})
            raise
        self.metrics.events.inc(accepted, tags={"outcome": "accepted"})
        self._attribute(events)
        return accepted

    def _attribute(self, events: list[Event]) -> None:
        """Conversions counted for the arm each poster is assigned (the arm that served them,
        while the split stays)."""
        rollout = self.model_endpoint.rollout
        if rollout is None:
            return
        arms = Counter(rollout.arm(str(e.user_id)) for e in events if e.type in self.conversions)
        for arm, count in arms.items():
            self.metrics.conversions.inc(
                count, tags={"model": self.model_endpoint.name, "arm": arm}
            )

    @staticmethod
    def prepare(predictor: Any) -> None:
        """A version's retrieval index, built before it answers (ModelEndpoint.on_load)."""
        if isinstance(predictor, Recommender):
            index = predictor.index
            log.info(
                f"{predictor.name}@{predictor.version}: {index.mode} retrieval over {index.items}"
                f" items (recall@10 {index.recall:.3f}, built in {index.build_s:.1f} s)"
            )

    def on_switch(self, old: Any, new: Any) -> None:
        """A new model version: its history length, and old vectors removed key by key."""
        self.store.layout.history_len = new.history_len
        try:
            self.store.layout.purge_vectors(old.name, [old.version])
        except Exception as e:  # best effort: stale versions are never read anyway
            log.warning(f"could not purge vectors of {old.name}@{old.version}: {e}")

    async def _write_back(self, user_id: str, predictor: Recommender, vector: np.ndarray) -> None:
        # Best effort: the answer is right without it; only the cache misses one write.
        with contextlib.suppress(RedisUnavailable):
            write = self.store.write_vector
            await self._redis("write", write, user_id, predictor.name, predictor.version, vector)

    async def _redis(self, operation: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One Redis call through the breaker, timed."""
        if not self.breaker.allow():
            raise RedisUnavailable()
        start = time.perf_counter()
        try:
            result = await call(*args)
        except Exception as e:  # connection refused, timeout, or a reply we cannot parse
            self.breaker.failed()
            log.warning(
                f"Redis {operation} failed ({type(e).__name__}: {e}); breaker {self.breaker.state}"
            )
            raise RedisUnavailable() from None
        self.breaker.succeeded()
        self.metrics.redis.observe(
            (time.perf_counter() - start) * 1000, tags={"operation": operation}
        )
        return result

    def _count_features(self, features: UserFeatures, cached: bool) -> None:
        if cached:
            for name, state in (
                ("history", features.history_state),
                ("vector", features.vector_state),
            ):
                self.metrics.features.inc(tags={"feature": name, "state": state})


def recommend_api(
    endpoint: RecommendEndpoint,
    keys: ApiKeys,
    max_k: int,
    max_body_bytes: int,
    models: Callable[[], Awaitable[dict[str, bool]]],
    relay_v1: Callable[[str, bytes, dict[str, str]], Awaitable[Response]],
) -> FastAPI:
    """The recommendations and events, and KServe V1's /models routes as the index answers
    them (`models`, `relay_v1`: api.index_api): recsys.yaml gives this application /v1, where
    they would otherwise be unreachable for every model."""
    api = FastAPI(
        title="Kiln recommendations",
        version=kiln.__version__,
        description="Top-k items for a user from a two-tower model and Redis features.",
    )
    api.add_middleware(RequestBody, max_bytes=max_body_bytes)
    answer_errors_as_protocol(api)
    document_schemas(api, Event)
    kserve_v1_routes(api, "", models, relay_v1)

    @api.get("/recommend/{user_id}", responses=ERRORS, dependencies=keys.required)
    async def recommend(
        user_id: str,
        k: int = Query(10, ge=1, le=max_k, description="how many items"),
        recent: str | None = Query(None, description="item ids just seen, comma separated"),
    ) -> dict[str, Any]:
        given = [i.strip() for i in (recent or "").split(",") if i.strip()]
        return await endpoint.recommend(user_id, k, given)

    body = {
        "oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Event"},
                "minItems": 1,
                "maxItems": MAX_EVENTS,
            },
        ]
    }

    @api.post(
        "/events",
        responses=ERRORS,
        dependencies=keys.required,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}}
        },
    )
    async def events(request: Request) -> JSONResponse:
        try:
            parsed = EVENTS.validate_json(await request.body())
        except ValidationError as e:
            raise RequestError(describe(e.errors())) from None
        batch = parsed if isinstance(parsed, list) else [parsed]
        if not 1 <= len(batch) <= MAX_EVENTS:
            raise RequestError(f"send 1 to {MAX_EVENTS} events; got {len(batch)}")
        try:
            accepted = await endpoint.ingest(batch)
        except RedisUnavailable:
            error = "the feature store is unavailable; the events were not stored, retry"
            return JSONResponse({"error": error}, 503, {"Retry-After": "1"})
        return JSONResponse({"accepted": accepted})

    @api.get("/")
    def info() -> dict[str, Any]:
        predictor = endpoint.predictor
        return {
            "model": predictor.name,
            "version": predictor.version,
            "follows": endpoint.model_endpoint.ref,
            "items": len(predictor.items),
            "users": len(predictor.users),
            "retrieval": {
                "mode": predictor.index.mode,
                "recall_at_10": round(predictor.index.recall, 4),
                "nprobe": predictor.index.nprobe,
                "build_s": round(predictor.index.build_s, 2),
            },
            "redis": endpoint.breaker.state,
        }

    return api
