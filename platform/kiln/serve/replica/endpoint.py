"""One registered model behind the Open Inference Protocol, inside a Ray Serve replica.

The endpoint follows its reference: for `digits-cnn@production` a watcher thread re-reads the
alias every few seconds and, when it moves, loads the new version beside the old one, runs an
example through it and only then swaps it in. A version that fails to load (corrupt file, wrong
architecture) is refused and logged; the old one keeps answering. Promotion is therefore just
`kiln models promote`: a registry write that works the same on a laptop and on Kubernetes, and
needs no access to Serve from the machine that promotes.

A rollout (`user_config.traffic`) sends requests that name no version to its arms instead:
each arm is an alias or version of the same model, followed by the same watcher, and loaded
before the first request is sent to it. A shadow (`traffic.shadow`) gets a copy of each answer's
request (shadow.py). Drift tracking (`user_config.drift`) keeps a window of answered inputs
and outputs per version, compared with its training reference on each watcher tick (drift.py).
"""

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ray import serve

from kiln.errors import KilnError, RequestError, UnknownArmError
from kiln.registry import ModelRegistry
from kiln.serve.config import Batching, Drift, EndpointUserConfig, Traffic
from kiln.serve.replica import access, triton
from kiln.serve.replica.drift import DriftMonitor
from kiln.serve.replica.metrics import DriftMetrics, EndpointMetrics, ShadowMetrics
from kiln.serve.replica.predictor import Predictor
from kiln.serve.replica.protocol import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    classified,
    encode_response,
)
from kiln.serve.replica.rollout import Feedback, Rollout
from kiln.serve.replica.shadow import ShadowCopy
from kiln.serve.replica.triton import Statistics

log = logging.getLogger("ray.serve")


class ModelEndpoint:
    def __init__(
        self,
        name: str,
        ref: str,
        registry: ModelRegistry,
        metrics: EndpointMetrics,
        watch_interval_s: float = 2.0,
        versions_cached: int = 2,
        on_switch: Callable[[Predictor, Predictor], None] | None = None,
        on_load: Callable[[Predictor], None] | None = None,
    ):
        self.name, self.ref, self.registry, self.metrics = name, ref, registry, metrics
        self.on_switch = on_switch  # (old, new), after a new version starts answering
        self.on_load = on_load  # (new), before it answers: what a deployment prepares
        self.drift: DriftMonitor | None = None  # set_drift, after the first version loads
        self.access_log = access.AccessLog(name)
        self.statistics = Statistics()  # Triton's statistics extension (GET .../stats)
        first = registry.resolve(ref)
        self.registered_name = first.name  # `name` is the endpoint's (the application's)
        # The registry's versions, listed again each watch interval by the watcher thread, not
        # per metadata call: on an object store a listing is a request per 1,000 files, and
        # the async handlers that describe a version would wait for it on the event loop.
        self.known_versions = registry.versions(first.name)
        self.current = self._load(first.version)
        metrics.loaded(first.version, self.current.load_seconds, serving=True)
        self.refused: dict[int, str] = {}
        self.others: OrderedDict[int, Predictor] = OrderedDict()
        self.versions_cached = versions_cached
        self.batching = Batching()
        self.traffic: Traffic | None = None
        self.rollout: Rollout | None = None
        self.shadow: ShadowCopy | None = None
        self.arm_versions: dict[str, int] = {}
        self._stopped = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(watch_interval_s,), daemon=True, name="alias-watcher"
        )
        self._watcher.start()

    # --- the protocol ----------------------------------------------------------------------

    async def predict(
        self,
        request: InferenceRequest,
        version: int | None = None,
        key: str | None = None,
        mirror: bool = True,
    ) -> tuple[int, str | None, dict[str, np.ndarray]]:
        """The version that answered, the rollout's arm that chose it (None: no rollout, or
        the request named its version) and the outputs the request asked for (all by
        default). `key` is the request's sticky key; `mirror=False` sends no shadow copy (for
        a request that is itself a copy). Raises RequestError (400) or ModelNotFoundError."""
        arm, version = self.route(version, key)
        predictor = await self.predictor(version)
        start = time.perf_counter_ns()
        x = predictor.prepare_request(request)
        prepared = time.perf_counter_ns()
        if self.batching.max_batch_size > 1:
            outputs, infer_ns = await self._batched((predictor, x))
        else:
            outputs, infer_ns = self._run(predictor, x)
        ran = time.perf_counter_ns()
        wanted = {name: outputs[name] for name in _wanted(request, outputs)}
        self.statistics.computed(
            predictor.version,
            input_ns=prepared - start,
            queue_ns=max(ran - prepared - infer_ns, 0),
            infer_ns=infer_ns,
            output_ns=time.perf_counter_ns() - ran,
        )
        if mirror and (shadow := self.shadow) is not None:
            shadow.send(request, wanted)
        return predictor.version, arm, wanted

    def answered(
        self, version: int | None, status: int, latency_ms: float, arm: str | None = None
    ) -> None:
        """Count an answer (HTTP status, or its gRPC equivalent) and maybe log it. A version
        that is not loaded here (a request for one the model lacks) counts as none: each
        made-up number would otherwise be a new series in Prometheus and a record here."""
        if version != self.current.version and version not in self.others:
            version = None
        self.metrics.answered(version, status, latency_ms, arm)
        self.access_log.answered(version, status, latency_ms, arm)
        self.statistics.answered(version, status == 200, int(latency_ms * 1e6))

    async def answer(
        self, request: InferenceRequest, version: int | None = None, key: str | None = None
    ) -> tuple[int, str | None, dict[str, np.ndarray]]:
        """`predict`, for a client: outputs it asked for as classifications (Triton's
        extension) come as their top classes, named by the answering version."""
        answered, arm, outputs = await self.predict(request, version, key)
        labels = (await self.predictor(answered)).output_labels
        return answered, arm, classified(request, outputs, labels)

    async def infer(
        self, request: InferenceRequest, version: int | None = None, key: str | None = None
    ) -> tuple[int, str | None, bytes, int | None]:
        """`answer`, as a REST body: the version that answered, the arm, the body, and the
        length of its JSON header when outputs follow it in binary."""
        answered, arm, outputs = await self.answer(request, version, key)
        start = time.perf_counter_ns()
        response = InferenceResponse(
            model_name=self.name,
            model_version=str(answered),
            id=request.id,
            parameters={"arm": arm} if arm else None,
            outputs=[],
        )
        body, header_length = encode_response(request, response, outputs)
        self.statistics.output_encoded(answered, time.perf_counter_ns() - start)
        return answered, arm, body, header_length

    def metadata(self, predictor: Predictor | None = None) -> ModelMetadata:
        """Of the version answering unversioned calls, or of `predictor`'s version."""
        current = predictor or self.current
        return ModelMetadata(
            name=self.name,
            versions=[str(v) for v in sorted({*self.known_versions, *self.loaded_versions})],
            platform=f"pytorch_{torch.__version__.split('+')[0]}",
            inputs=current.inputs + [tensor for tensor, _ in current.optional_inputs],
            outputs=current.outputs,
            parameters={
                "task": current.card["task"],
                "follows": self.ref,
                "version": current.version,
                "refused": {str(v): why for v, why in self.refused.items()},
                **({"traffic": self.traffic.model_dump(exclude_none=True)} if self.traffic else {}),
                **({"drift": self.drift.config.model_dump()} if self.drift else {}),
                **current.notes,
            },
        )

    def triton_config(self, predictor: Predictor, max_body_bytes: int) -> dict[str, Any]:
        """Triton's configuration of `predictor`'s version (REST's JSON form)."""
        metadata = self.metadata(predictor)
        return triton.model_config(metadata, predictor.required_inputs, max_body_bytes)

    @property
    def loaded_versions(self) -> list[int]:
        """The version answering unversioned calls, then the others kept loaded."""
        return [self.current.version, *self.others]

    async def triton_statistics(self, version: int | None) -> dict[str, Any]:
        """Triton's statistics of a version, or of every version loaded here (None)."""
        if version is None:
            return self.statistics.to_json(self.name, self.loaded_versions)
        await self.predictor(version)  # a version the registry lacks is ModelNotFoundError
        return self.statistics.to_json(self.name, [version])

    async def predictor(self, version: int | None) -> Predictor:
        current = self.current
        if version is None or version == current.version:
            return current
        if version in self.others:
            self.others.move_to_end(version)
            return self.others[version]
        return await asyncio.to_thread(self._cached, version)  # ModelNotFoundError: none

    def _cached(self, version: int) -> Predictor:
        """The version loaded once and kept: the least recently used other version goes
        first, never one a rollout's arm points at."""
        if version == self.current.version:
            return self.current
        if version not in self.others:
            self.others[version] = self._load(version)
            keep = max(self.versions_cached, len(self.arm_versions))
            while len(self.others) > keep:
                self.others.popitem(last=False)
        self.others.move_to_end(version)
        return self.others[version]

    def reconfigure(self, config: EndpointUserConfig) -> None:
        """A `user_config` change, applied in the running replica."""
        self.set_batching(config)
        self.set_traffic(config.traffic)
        self.access_log.share = config.access_log_share

    # --- rollouts --------------------------------------------------------------------------

    def route(self, version: int | None, key: str | None) -> tuple[str | None, int | None]:
        """The arm and version for a request that asked for `version` (None: any) with this
        sticky key: the rollout's arm when it names none, else no arm."""
        if version is None and (rollout := self.rollout) is not None:
            arm = rollout.arm(key)
            return arm, self.arm_versions.get(arm)
        return None, version

    def set_traffic(self, traffic: Traffic | None) -> None:
        """Start, change or end a rollout and a shadow (a `user_config` change: the replica
        keeps running). Raises ModelNotFoundError for an arm the registry does not have."""
        shadow = traffic.shadow if traffic else None
        if shadow is None:
            self.shadow = None
        elif self.shadow is None or self.shadow.config != shadow:
            self.shadow = ShadowCopy(shadow, ShadowMetrics(self.name, shadow.application))
        if traffic is None or traffic.split is None:
            self.rollout, self.arm_versions = None, {}
        else:
            rollout = Rollout(traffic.split, traffic.sticky_header)
            versions = {arm: self._version_of(arm) for arm in rollout.arms}
            self.arm_versions = {**self.arm_versions, **versions}  # kept while loading others
            for version in versions.values():
                self._cached(version)
            self.rollout, self.arm_versions = rollout, versions
            log.info(f"{self.name}: rollout {traffic.split} -> versions {versions}")
        self.traffic = traffic  # what metadata says is live

    def labelled(self, feedback: Feedback) -> None:
        """Count a client's feedback on an arm of the running rollout (only those: an arm
        is a metric label, and a label per made-up name would grow Prometheus without bound).
        Raises UnknownArmError (404)."""
        arms = self.rollout.arms if self.rollout else []
        if feedback.arm not in arms:
            raise UnknownArmError(
                f"{self.name} has no arm {feedback.arm!r} "
                + (f"(its arms: {', '.join(arms)})" if arms else "(no rollout runs)")
            )
        self.metrics.labelled(feedback.arm, feedback.correct, feedback.wrong)

    def _follow_arms(self) -> None:
        """An arm that is an alias follows it, as the endpoint follows its own reference."""
        rollout = self.rollout
        if rollout is None:
            return
        for arm in rollout.arms:
            version = self._version_of(arm)
            if version != self.arm_versions.get(arm):
                self._cached(version)
                self.arm_versions = {**self.arm_versions, arm: version}
                log.info(f"{self.name}: arm {arm} now answers with version {version}")

    def _version_of(self, arm: str) -> int:
        return self.registry.resolve(f"{self.registered_name}@{arm}").version

    # --- drift ------------------------------------------------------------------------------

    def set_drift(self, config: Drift | None) -> None:
        """Start, change or stop drift tracking (a `user_config` change)."""
        if config is None:
            self.drift = None
            return
        if self.drift is not None and self.drift.config == config:
            return  # the same settings: keep the windows gathered so far
        names = self.current.transform.get("standardize", {}).get("features")
        drift = DriftMonitor(config, DriftMetrics(self.name), names)
        for predictor in [self.current, *self.others.values()]:
            drift.watch(predictor)
        self.drift = drift

    # --- batching --------------------------------------------------------------------------

    def set_batching(self, batching: Batching) -> None:
        self.batching = batching
        batched: Any = self._batched  # serve.batch adds these setters
        batched.set_max_batch_size(batching.max_batch_size)
        batched.set_batch_wait_timeout_s(batching.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(
        self, items: list[tuple[Predictor, torch.Tensor]]
    ) -> list[tuple[dict[str, Any], int]]:
        """Requests that arrive together run as one model call per version: each gets its
        rows of the outputs, and the call's duration in ns."""
        results: list[tuple[dict[str, Any], int]] = [({}, 0) for _ in items]
        for predictor in {id(p): p for p, _ in items}.values():
            positions = [i for i, (p, _) in enumerate(items) if p is predictor]
            sizes = [len(items[i][1]) for i in positions]
            outputs, ns = self._run(predictor, torch.cat([items[i][1] for i in positions]))
            start = 0
            for position, size in zip(positions, sizes, strict=True):
                results[position] = ({k: v[start : start + size] for k, v in outputs.items()}, ns)
                start += size
        return results

    def _run(self, predictor: Predictor, x: torch.Tensor) -> tuple[dict[str, Any], int]:
        """One model call, counted, and seen by drift tracking (once per batch, not per
        request, so that batching also batches drift's bookkeeping), and its duration."""
        start = time.perf_counter_ns()
        outputs = predictor.run(x)
        ns = time.perf_counter_ns() - start
        self.statistics.executed(predictor.version, len(x), ns)
        self.metrics.batched(predictor.version, len(x))
        if (drift := self.drift) is not None:
            drift.observe(predictor.version, *predictor.drift_view(x, outputs))
        return outputs, ns

    # --- following the alias ---------------------------------------------------------------

    def refresh(self) -> None:
        """Serve the version the reference points at now, unless it was refused before."""
        version = self.registry.resolve(self.ref).version
        if version == self.current.version or version in self.refused:
            return
        old = self.current
        try:
            cached = self.others.pop(version, None)
            self.current = cached or self._load(version)
        except KilnError as e:
            self.refused[version] = str(e)
            self.metrics.refused(version)
            log.warning(
                f"{self.name}: refused version {version}, serving {self.current.version}: {e}"
            )
            return
        self.metrics.loaded(version, self.current.load_seconds, serving=True)
        log.info(f"{self.name}: now serving version {version} ({self.ref})")
        if self.on_switch:
            self.on_switch(old, self.current)

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            try:
                self.known_versions = self.registry.versions(self.registered_name)
                self.refresh()
                self._follow_arms()
                if (drift := self.drift) is not None:
                    drift.export({self.current.version, *self.others})
                access.flush()
            except Exception as e:  # the watcher must outlive any tick
                # The alias deleted, the registry's bucket unreachable for a while (an
                # OSError from the filesystem, which ended this thread: the endpoint then
                # never followed another promotion): keep serving, look again next tick.
                log.warning(f"{self.name}: cannot follow {self.ref}: {e}")
            # Ray exports a gauge only while it is being set: say it again every tick.
            self.metrics.loaded(self.current.version, self.current.load_seconds, serving=True)

    def _load(self, version: int) -> Predictor:
        predictor = Predictor.load(
            self.registry, self.registry.resolve(f"{self.registered_name}@{version}")
        )
        if self.on_load:
            started = time.perf_counter()
            self.on_load(predictor)
            predictor.load_seconds += time.perf_counter() - started
        if (drift := self.drift) is not None:
            drift.watch(predictor)
        self.metrics.loaded(version, predictor.load_seconds, serving=False)
        return predictor


def _wanted(request: InferenceRequest, outputs: dict[str, Any]) -> list[str]:
    if not request.outputs:
        return list(outputs)
    names = [o.name for o in request.outputs]
    if unknown := [n for n in names if n not in outputs]:
        raise RequestError(f"unknown output {unknown[0]!r}; this model gives {', '.join(outputs)}")
    return names
