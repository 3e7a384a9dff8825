"""One registered model behind the Open Inference Protocol, inside a Ray Serve replica.

The endpoint follows its reference: for `digits-cnn@production` a watcher thread re-reads the
alias every few seconds and, when it moves, loads the new version beside the old one, runs an
example through it and only then swaps it in. A version that fails to load (corrupt file, wrong
architecture) is refused and logged; the old one keeps answering. Promotion is therefore just
`kiln models promote`: a registry write that works the same on a laptop and on Kubernetes, and
needs no access to Serve from the machine that promotes.
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

from kiln.errors import KilnError, ModelNotFoundError, RequestError
from kiln.registry import ModelRegistry
from kiln.serve.config import Batching
from kiln.serve.replica.metrics import EndpointMetrics
from kiln.serve.replica.predictor import Predictor
from kiln.serve.replica.protocol import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    encode_response,
    pick_input,
)

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
        first = registry.resolve(ref)
        self.registered_name = first.name  # `name` is the endpoint's (the application's)
        self.current = self._load(first.version)
        metrics.loaded(first.version, self.current.load_seconds, serving=True)
        self.refused: dict[int, str] = {}
        self.others: OrderedDict[int, Predictor] = OrderedDict()
        self.versions_cached = versions_cached
        self.batching = Batching()
        self._stopped = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(watch_interval_s,), daemon=True, name="alias-watcher"
        )
        self._watcher.start()

    # --- the protocol ----------------------------------------------------------------------

    async def predict(
        self, request: InferenceRequest, version: int | None = None
    ) -> tuple[int, dict[str, np.ndarray]]:
        """The version that answered and the outputs the request asked for (all by default).
        Raises RequestError (400) or ModelNotFoundError (404)."""
        predictor = await self.predictor(version)
        x = predictor.prepare(*pick_input(request, predictor.inputs))
        if self.batching.max_batch_size > 1:
            outputs = await self._batched((predictor, x))
        else:
            outputs = predictor.run(x)
            self.metrics.batched(predictor.version, len(x))
        return predictor.version, {name: outputs[name] for name in _wanted(request, outputs)}

    async def infer(
        self, request: InferenceRequest, version: int | None = None
    ) -> tuple[int, bytes, int | None]:
        """`predict`, as a REST body: the version that answered, the body, and the length of
        its JSON header when outputs follow it in binary."""
        answered, outputs = await self.predict(request, version)
        response = InferenceResponse(
            model_name=self.name, model_version=str(answered), id=request.id, outputs=[]
        )
        return answered, *encode_response(request, response, outputs)

    def metadata(self, predictor: Predictor | None = None) -> ModelMetadata:
        """Of the version answering unversioned calls, or of `predictor`'s version."""
        current = predictor or self.current
        return ModelMetadata(
            name=self.name,
            versions=[str(v) for v in self.registry.versions(self.registered_name)],
            platform=f"pytorch_{torch.__version__.split('+')[0]}",
            inputs=current.inputs,
            outputs=current.outputs,
            parameters={
                "task": current.card["task"],
                "follows": self.ref,
                "version": current.version,
                "refused": {str(v): why for v, why in self.refused.items()},
            },
        )

    async def predictor(self, version: int | None) -> Predictor:
        current = self.current
        if version is None or version == current.version:
            return current
        if version not in self.others:
            if version not in self.registry.versions(self.registered_name):
                raise ModelNotFoundError(f"{self.name} has no version {version}")
            self.others[version] = await asyncio.to_thread(self._load, version)
            while len(self.others) > self.versions_cached:
                self.others.popitem(last=False)
        self.others.move_to_end(version)
        return self.others[version]

    # --- batching --------------------------------------------------------------------------

    def set_batching(self, batching: Batching) -> None:
        self.batching = batching
        batched: Any = self._batched  # serve.batch adds these setters
        batched.set_max_batch_size(batching.max_batch_size)
        batched.set_batch_wait_timeout_s(batching.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, items: list[tuple[Predictor, torch.Tensor]]) -> list[dict[str, Any]]:
        """Requests that arrive together run as one model call per version."""
        results: list[dict[str, Any]] = [{} for _ in items]
        for predictor in {id(p): p for p, _ in items}.values():
            positions = [i for i, (p, _) in enumerate(items) if p is predictor]
            sizes = [len(items[i][1]) for i in positions]
            outputs = predictor.run(torch.cat([items[i][1] for i in positions]))
            self.metrics.batched(predictor.version, sum(sizes))
            start = 0
            for position, size in zip(positions, sizes, strict=True):
                results[position] = {k: v[start : start + size] for k, v in outputs.items()}
                start += size
        return results

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
                self.refresh()
            except KilnError as e:  # e.g. the alias was deleted: keep serving what we have
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
        self.metrics.loaded(version, predictor.load_seconds, serving=False)
        return predictor


def _wanted(request: InferenceRequest, outputs: dict[str, Any]) -> list[str]:
    if not request.outputs:
        return list(outputs)
    names = [o.name for o in request.outputs]
    if unknown := [n for n in names if n not in outputs]:
        raise RequestError(f"unknown output {unknown[0]!r}; this model gives {', '.join(outputs)}")
    return names
