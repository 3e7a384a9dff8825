"""Kiln's serving metrics, exported with Ray Serve's own (`ray_serve_*`) on each node's metrics
port. Ray prefixes names with `ray_` and counters end in `_total`:

    ray_kiln_requests_total{model, version, arm, code}     answered requests (arm: a rollout's)
    ray_kiln_request_latency_ms_bucket{model, version, arm} time in the replica, parsing included
    ray_kiln_batch_size_bucket{model, version}             examples per model call
    ray_kiln_model_load_seconds{model, version}            load and warm-up time
    ray_kiln_model_version{model}                          the version answering unversioned calls
    ray_kiln_model_refusals_total{model, version}          versions that failed to load
    ray_kiln_feedback_total{model, arm, outcome}           clients' labelled feedback per arm
"""

from typing import Any

from ray.serve import metrics

LATENCY_MS = [0.5, 1.0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH = [1.0, 2, 4, 8, 16, 32, 64, 128, 256]
DELTA = [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0]


class EndpointMetrics:
    def __init__(self, model: str):
        self.model = model
        by_version: Any = ("model", "version")  # Ray's stubs say tuple[str]
        self.requests = metrics.Counter(
            "kiln_requests",
            "requests answered",
            tag_keys=("model", "version", "arm", "code"),  # type: ignore[arg-type]
        )
        self.latency = metrics.Histogram(
            "kiln_request_latency_ms",
            "time in the replica",
            LATENCY_MS,
            tag_keys=("model", "version", "arm"),  # type: ignore[arg-type]
        )
        self.batch = metrics.Histogram(
            "kiln_batch_size", "examples per model call", BATCH, tag_keys=by_version
        )
        self.load_seconds = metrics.Gauge(
            "kiln_model_load_seconds", "load and warm-up", tag_keys=by_version
        )
        self.version = metrics.Gauge("kiln_model_version", "version served", tag_keys=("model",))
        self.refusals = metrics.Counter(
            "kiln_model_refusals", "versions refused at load", tag_keys=by_version
        )
        self.feedback = metrics.Counter(
            "kiln_feedback",
            "answers a client marked correct or wrong",
            tag_keys=("model", "arm", "outcome"),  # type: ignore[arg-type]
        )

    def answered(
        self, version: int | None, code: int, latency_ms: float, arm: str | None = None
    ) -> None:
        tags = {"model": self.model, "version": str(version or ""), "arm": arm or ""}
        self.requests.inc(tags={**tags, "code": str(code)})
        self.latency.observe(latency_ms, tags=tags)

    def batched(self, version: int, examples: int) -> None:
        self.batch.observe(examples, tags={"model": self.model, "version": str(version)})

    def loaded(self, version: int, seconds: float, serving: bool) -> None:
        self.load_seconds.set(seconds, tags={"model": self.model, "version": str(version)})
        if serving:
            self.version.set(version, tags={"model": self.model})

    def refused(self, version: int) -> None:
        self.refusals.inc(tags={"model": self.model, "version": str(version)})

    def labelled(self, arm: str, correct: int, wrong: int) -> None:
        for outcome, count in (("correct", correct), ("wrong", wrong)):
            if count:  # a Ray counter takes only positive steps
                self.feedback.inc(count, tags={"model": self.model, "arm": arm, "outcome": outcome})


class RecommendMetrics:
    """ray_kiln_cache_total{model,version,result}      hit, miss or bypass (Redis skipped)
    ray_kiln_feature_reads_total{feature,state}         fresh, stale or missing, per feature
    ray_kiln_redis_latency_ms_bucket{operation}         one Redis round trip
    ray_kiln_degraded_total{model,reason}               answers without the feature cache
    ray_kiln_events_total{outcome}                      accepted or rejected (Redis down)
    ray_kiln_conversions_total{model,arm}               conversion events by the user's arm
    ray_kiln_recommend_latency_ms_bucket{model,version} time in the replica
    """

    def __init__(self, model: str):
        self.model = model
        self.cache = metrics.Counter(
            "kiln_cache",
            "user vector lookups",
            tag_keys=("model", "version", "result"),  # type: ignore[arg-type]
        )
        self.features = metrics.Counter(
            "kiln_feature_reads",
            "feature states at read",
            tag_keys=("feature", "state"),  # type: ignore[arg-type]
        )
        self.redis = metrics.Histogram(
            "kiln_redis_latency_ms", "Redis round trip", LATENCY_MS, tag_keys=("operation",)
        )
        self.degraded = metrics.Counter(
            "kiln_degraded",
            "answers without the cache",
            tag_keys=("model", "reason"),  # type: ignore[arg-type]
        )
        self.events = metrics.Counter("kiln_events", "events posted", tag_keys=("outcome",))
        self.conversions = metrics.Counter(
            "kiln_conversions",
            "conversion events (e.g. clicks) attributed to the user's rollout arm",
            tag_keys=("model", "arm"),  # type: ignore[arg-type]
        )
        self.latency = metrics.Histogram(
            "kiln_recommend_latency_ms",
            "time in the replica",
            LATENCY_MS,
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )


class ShadowMetrics:
    """ray_kiln_shadow_requests_total{model,shadow,outcome}  compared, failed or skipped copies
    ray_kiln_shadow_examples_total{model,shadow,result}      rows whose labels agreed or not
    ray_kiln_shadow_score_delta_bucket{model,shadow}          largest score difference per copy
    ray_kiln_shadow_latency_ms_bucket{model,shadow}           a copy's round trip to the shadow
    """

    def __init__(self, model: str, shadow: str):
        self.tags = {"model": model, "shadow": shadow}
        pair: Any = ("model", "shadow")
        self.requests = metrics.Counter(
            "kiln_shadow_requests",
            "requests copied to a shadow",
            tag_keys=("model", "shadow", "outcome"),  # type: ignore[arg-type]
        )
        self.examples = metrics.Counter(
            "kiln_shadow_examples",
            "rows compared with the shadow's",
            tag_keys=("model", "shadow", "result"),  # type: ignore[arg-type]
        )
        self.delta = metrics.Histogram(
            "kiln_shadow_score_delta", "largest score difference", DELTA, tag_keys=pair
        )
        self.latency = metrics.Histogram(
            "kiln_shadow_latency_ms", "a copy's round trip", LATENCY_MS, tag_keys=pair
        )

    def request(self, outcome: str) -> None:
        self.requests.inc(tags={**self.tags, "outcome": outcome})

    def compared(self, comparison: Any, latency_ms: float) -> None:
        self.request("compared")
        self.latency.observe(latency_ms, tags=self.tags)
        if comparison.agreed is not None:
            disagreed = comparison.examples - comparison.agreed
            for result, count in (("agreed", comparison.agreed), ("disagreed", disagreed)):
                if count:  # a Ray counter takes only positive steps
                    self.examples.inc(count, tags={**self.tags, "result": result})
        if comparison.max_delta is not None:
            self.delta.observe(comparison.max_delta, tags=self.tags)


class DriftMetrics:
    """ray_kiln_drift_psi{model,version,feature}   population stability index of the window
    ray_kiln_drift_ks{model,version,feature}        Kolmogorov-Smirnov statistic (binned)
    ray_kiln_drift_window_rows{model,version}       live rows compared

    `feature` is an input feature's name (models of at most `max_features` features), `_inputs`
    (the largest over the input features) or `_output` (the prediction). See drift.py.
    """

    def __init__(self, model: str, max_features: int = 64):
        self.model, self.max_features = model, max_features
        by_feature: Any = ("model", "version", "feature")
        self.psi = metrics.Gauge("kiln_drift_psi", "population stability index", by_feature)
        self.ks = metrics.Gauge("kiln_drift_ks", "Kolmogorov-Smirnov statistic", by_feature)
        self.window = metrics.Gauge(
            "kiln_drift_window_rows",
            "live rows compared",
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )

    def drifted(self, version: int, feature: str, psi: float, ks: float) -> None:
        tags = {"model": self.model, "version": str(version), "feature": feature}
        self.psi.set(psi, tags=tags)
        self.ks.set(ks, tags=tags)

    def rows(self, version: int, rows: int) -> None:
        self.window.set(rows, tags={"model": self.model, "version": str(version)})
