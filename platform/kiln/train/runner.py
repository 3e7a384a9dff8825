"""From a job spec to a registered model: data on the driver, a `TorchTrainer` on Ray Train V2,
live progress, and the best checkpoint registered with its card, metrics and lineage."""

import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

from kiln import data as datasets
from kiln.data import Dataset, StreamedDataset
from kiln.errors import Interrupted, RegistryError, StorageError, TrainingError
from kiln.settings import REPORT_POLL, absolute, get_settings
from kiln.spec import JobSpec
from kiln.storage import check_places
from kiln.train import loops
from kiln.train.mistakes import disk_full, mistake_of
from kiln.train.progress import ProgressView
from kiln.train.sharding import ExactValidation
from kiln.train.trainer import LeanTorchTrainer, has_state_api

log = logging.getLogger(__name__)
WAIT_NOTICE_S = 20  # no report by then: say what the workers are waiting for, if anything


@dataclass
class TrainOutcome:
    model: str
    version: int | None
    alias: str | None
    metrics: dict[str, float]  # of the registered (best) checkpoint
    baselines: dict[str, float]
    run_name: str
    run_path: str
    history: list[dict[str, float]] = field(default_factory=list)
    failures: int = 0
    first_report_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "metrics": self.metrics,
            "baselines": self.baselines,
            "run_name": self.run_name,
            "run_path": self.run_path,
            "epochs_run": len(self.history),
            "worker_failures": self.failures,
        }


def new_run_name(spec: JobSpec) -> str:
    """Unique per new run; pass the same name again (--run-name) to resume that run."""
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_job(
    spec: JobSpec, view: ProgressView, run_name: str | None = None, register: bool = True
) -> TrainOutcome:
    """Train `spec` on the connected Ray cluster and register the best checkpoint."""
    run_name = run_name or new_run_name(spec)
    storage = absolute(spec.storage_path or get_settings().storage_uri)
    check_places(storage, registers=register and spec.registration is not None)
    start_autoscaling_coordinator(spec)
    dataset = datasets.build(spec.data, spec.task)
    trainer = build_trainer(
        spec, dataset, run_name, storage, watch_placement_groups=has_state_api()
    )
    needed = workers_need(spec, worker_resources(spec, isinstance(dataset, StreamedDataset)))
    try:
        result = _fit_with_progress(trainer, view, needed, spec.scaling.start_timeout_s)
    except KeyboardInterrupt:  # Ctrl-C, after the run is aborted
        raise _interrupted(run_name, view) from None
    except StorageError as e:  # a full disk: the checkpoints so far are kept
        raise StorageError(
            f"run {run_name} stopped {_stopped_when(view)}: {e} (run storage {storage}). Free "
            f"space, then continue it from its last checkpoint with the same command and "
            f"--run-name {run_name}"
        ) from None

    history = run_history(result.checkpoint)
    refuse_diverged(history)
    checkpoint, best_metrics = best_checkpoint(result, spec)
    outcome = TrainOutcome(
        model=spec.model_name,
        version=None,
        alias=None,
        metrics=best_metrics,
        baselines=dataset.baselines,
        run_name=run_name,
        run_path=f"{storage}/{run_name}",
        history=history,
        failures=sum(e["kind"] == "failure" for e in view.events),
        first_report_s=view.first_report_s,
    )
    if register and spec.registration is not None:
        from kiln.train.publish import publish

        try:
            version, alias = publish(spec, dataset, checkpoint, outcome)
        except (RegistryError, OSError) as e:
            raise RegistryError(
                f"{e}. Run {run_name} finished and keeps its checkpoints in {outcome.run_path}: "
                f"register its best with the same command and --run-name {run_name}"
            ) from None
        outcome.version, outcome.alias = version.version, alias
    return outcome


def _interrupted(run_name: str, view: ProgressView) -> Interrupted:
    return Interrupted(
        f"run {run_name} stopped {_stopped_when(view)}; nothing registered. Continue it from "
        f"its last checkpoint with the same command and --run-name {run_name}"
    )


def _stopped_when(view: ProgressView) -> str:
    epochs = [e["metrics"]["epoch"] for e in view.events if e["kind"] == "report"]
    return f"after epoch {epochs[-1]}" if epochs else "before its first epoch"


def build_trainer(
    spec: JobSpec,
    dataset: Dataset | StreamedDataset,
    run_name: str,
    storage: str,
    data_ref: ray.ObjectRef | None = None,
    start_from: str | None = None,
    watch_placement_groups: bool = True,
    reports_in_flight: int | None = None,
) -> LeanTorchTrainer:
    """`data_ref`: the dataset already in the object store (a search puts it once for all of
    its trials); a streamed dataset's rows go to the workers as Ray Data shards instead.
    `start_from`: the path in `storage` of a checkpoint to continue from (another run's).
    `watch_placement_groups`, `reports_in_flight`: see kiln.train.trainer. The run's events
    are read from the trainer's `events`."""
    scaling = spec.scaling
    workers: Any = scaling.num_workers  # an int, or a (min, max) tuple for elastic training
    extras = loops.prepare(spec, dataset)
    streamed = isinstance(dataset, StreamedDataset)
    data_ref = data_ref or put_for_workers(dataset)
    poll_reports_often()
    return LeanTorchTrainer(
        loops.train_loop_per_worker,  # imports the task's loop on the workers
        train_loop_config={
            "spec": spec.model_dump(mode="json", by_alias=True),
            "data": data_ref,
            "extras": extras,
            "start_from": start_from and {"path": start_from, "storage": storage},
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=worker_resources(spec, streamed),
        ),
        datasets=dataset.datasets if isinstance(dataset, StreamedDataset) else None,
        dataset_config=ExactValidation() if streamed else None,
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            # Train V2's FailureConfig at run time; mypy reads ray.train's V1 import of it.
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]
                max_failures=spec.failure.max_failures,
                controller_failure_limit=start_retries(spec.scaling.start_timeout_s),
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.checkpoint.keep,
                checkpoint_score_attribute=spec.checkpoint.metric,
                checkpoint_score_order=spec.checkpoint.mode or "max",
            ),
        ),
        watch_placement_groups=watch_placement_groups,
        request_autoscaling=get_settings().autoscaling_requests,
        reports_in_flight=reports_in_flight,
    )


def uses_autoscaling_coordinator(spec: JobSpec) -> bool:
    """Whether the spec's runs talk to Ray's autoscaling coordinator: unless the cluster
    cannot grow (kiln.settings' `autoscaling_requests`), and then still with a dataset that
    may stream (Ray Data shares the cluster through it) or an elastic worker count."""
    may_stream = datasets.streams(spec.data.name) and spec.data.streaming is not False
    elastic = isinstance(spec.scaling.num_workers, tuple)
    return get_settings().autoscaling_requests or may_stream or elastic


def start_autoscaling_coordinator(spec: JobSpec) -> None:
    """Ray Train's first run on a cluster creates Ray's autoscaling coordinator (a detached
    actor, kept for the cluster's life) and waits for its process to answer before it starts
    the workers. Asked for here, it starts while the driver builds the dataset: on a fresh
    2-core local Ray, `kiln train jobs/digits-cnn.yaml` then reached its first epoch in a
    median 15.5 s instead of 16.9 s (6 and 5 runs). The function lives in a private Ray module:
    should it move or change, runs only lose the head start (Ray Train creates the actor
    itself)."""
    if not uses_autoscaling_coordinator(spec):
        return
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        get_or_create_autoscaling_coordinator()
    except Exception as e:  # an optimisation only: never a reason for a run to fail
        log.debug(f"Ray's autoscaling coordinator not started ahead: {e!r}")


def poll_reports_often() -> None:
    """Kiln's report poll (kiln.settings.REPORT_POLL) unless one is set. Ray Train hands the
    interval of the process that calls fit() to the run's controller (on the cluster that
    `kiln train` starts, the controller inherits it from the cluster's environment)."""
    os.environ.setdefault(*REPORT_POLL)


def put_for_workers(dataset: Dataset | StreamedDataset) -> ray.ObjectRef:
    """What every worker gets through `train_loop_config`: the arrays, or for a streamed
    dataset only its schema and counts (its rows arrive as Ray Data shards)."""
    return ray.put(dataset.for_workers() if isinstance(dataset, StreamedDataset) else dataset)


def worker_resources(spec: JobSpec, streamed: bool) -> dict[str, float] | None:
    """What each worker reserves. Ray Data reads a stream with the CPUs the workers leave
    free, and with none left it waits forever: unless the spec says otherwise, workers of a
    streamed job share all but one CPU of the cluster when they would take them all."""
    given = spec.scaling.resources_per_worker
    if given is not None or not streamed:
        return given
    workers = spec.scaling.num_workers
    count = workers[1] if isinstance(workers, tuple) else workers
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if cpus - count >= 1:
        return None  # one CPU each, and some left over
    return {"CPU": max(round((cpus - 1) / count, 2), 0.1)}


def start_retries(timeout_s: float | None) -> int:
    """Ray Train waits `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s) for the workers'
    placement group, then retries without end: on a cluster whose CPUs are held by other
    jobs or Serve replicas, a run would wait forever. This many retries give up after about
    `timeout_s` (None: retry forever, for clusters that add nodes on demand)."""
    if timeout_s is None:
        return -1
    attempt_s = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60))
    return max(0, math.ceil(timeout_s / attempt_s) - 1)


def workers_need(spec: JobSpec, per_worker: dict[str, float] | None) -> dict[str, float]:
    """What the smallest worker group reserves in all, as Ray's ScalingConfig computes it."""
    per_worker = per_worker or {"CPU": 1.0, **({"GPU": 1.0} if spec.scaling.use_gpu else {})}
    workers = spec.scaling.num_workers
    count = workers[0] if isinstance(workers, tuple) else workers
    return {name: amount * count for name, amount in per_worker.items() if amount}


def _fit_with_progress(
    trainer: LeanTorchTrainer,
    view: ProgressView,
    needed: dict[str, float],
    start_timeout_s: float | None,
):
    """fit() blocks, so it runs in a thread while this one draws progress, and says so
    when the workers are still waiting for resources after `WAIT_NOTICE_S`."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as e:  # re-raised below, on the caller's thread
            outcome["error"] = e

    groups_before = set(ray.util.placement_group_table())
    thread = threading.Thread(target=fit, name="kiln-fit", daemon=True)
    thread.start()
    noticed = False
    with view:
        try:
            while thread.is_alive():
                view.drain(trainer.events)
                if not noticed and not view.events and view.elapsed_s() > WAIT_NOTICE_S:
                    noticed = True
                    if short := shortfall(needed, groups_before):
                        view.waiting(f"{short}; {_patience(start_timeout_s)}")
        except KeyboardInterrupt:  # the run ends before this process does, not under it
            trainer.events.abort(thread)
            raise
        view.drain(trainer.events, timeout=0)  # the run's last events
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError):
            short = shortfall(needed, groups_before) or "their resources were not free in time"
            raise TrainingError(
                f"training workers could not start within {start_timeout_s:g} s "
                f"(scaling.start_timeout_s): {short}"
            ) from error
        if spec_error := mistake_of(error):
            raise spec_error from None  # one line, as where the run starts
        if full := disk_full(error):
            raise StorageError(f"no space left on device: {full}") from error
        raise TrainingError(f"training failed: {_root_cause(error)}") from error
    return outcome["result"]


def shortfall(needed: dict[str, float], groups_before: set[str]) -> str | None:
    """What the workers wait for, in words, or None when the cluster has it free now or
    their placement group (one created since `groups_before`) already holds it: then they
    are only starting, and the resources they took are not "held by other jobs"."""
    if placed(needed, groups_before):
        return None
    free = ray.available_resources()
    total = ray.cluster_resources()
    short = {name: amount for name, amount in needed.items() if free.get(name, 0.0) < amount}
    if not short:
        return None
    return "the workers need " + ", ".join(
        lacking(name, amount, free.get(name, 0.0), total.get(name, 0.0))
        for name, amount in short.items()
    )


def lacking(name: str, amount: float, free: float, total: float) -> str:
    if total < amount:  # no job holds what was never there: only new nodes bring it
        return (
            f"{amount:g} {name} (the cluster has {total:g} in all: add nodes, or lower "
            "scaling.num_workers or resources_per_worker)"
        )
    holders = "other jobs or Serve replicas hold the rest"
    return f"{amount:g} {name} (free {free:g} of {total:g}: {holders})"


def placed(needed: dict[str, float], groups_before: set[str]) -> bool:
    """Placement groups created since `groups_before` (the run's workers') hold `needed`."""
    held: Counter[str] = Counter()
    for group_id, group in ray.util.placement_group_table().items():
        if group_id not in groups_before and group["state"] == "CREATED":
            for bundle in group["bundles"].values():
                held.update(bundle)
    return all(held[name] >= amount for name, amount in needed.items())


def _patience(timeout_s: float | None) -> str:
    if timeout_s is None:
        return "waiting without a limit (scaling.start_timeout_s: null)"
    return f"giving up after {timeout_s:g} s (scaling.start_timeout_s)"


def best_checkpoint(result, spec: JobSpec) -> tuple[ray.train.Checkpoint, dict[str, float]]:
    checkpoints = result.best_checkpoints or []
    if not checkpoints:
        raise TrainingError("training ended without a checkpoint")
    sign = 1 if spec.checkpoint.mode == "max" else -1
    checkpoint, metrics = max(checkpoints, key=lambda cm: sign * cm[1][spec.checkpoint.metric])
    return checkpoint, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def refuse_diverged(history: list[dict[str, float]]) -> None:
    """A run whose loss became NaN or infinite stopped there (every rank together: the
    losses are all-reduced); its weights are no model to register."""
    if history and history[-1].get("diverged"):
        last = history[-1]
        losses = ", ".join(f"{k}={v}" for k, v in last.items() if k.endswith("_loss"))
        raise TrainingError(
            f"training diverged at epoch {int(last['epoch'])} ({losses}); nothing registered. "
            "Look for NaN or infinite values in the data, or lower train.optimizer.lr"
        )


def run_history(checkpoint: ray.train.Checkpoint | None) -> list[dict[str, float]]:
    """Every epoch's metrics, from the latest checkpoint (so epochs redone after a resume
    appear once)."""
    from kiln.train.session import read_state

    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        return read_state(folder)["progress"]["history"]


def _root_cause(error: BaseException) -> str:
    messages = []
    while error is not None:
        text = str(error).strip()
        if text:
            messages.append(text.splitlines()[-1])
        error = error.__cause__  # type: ignore[assignment]
    return messages[-1][:300] if messages else "unknown error"
