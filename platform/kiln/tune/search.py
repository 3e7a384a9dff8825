"""Building and running the search; registering the best trial with its story."""

import functools
import io
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import ray
import ray.train
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from kiln import data as datasets
from kiln import plots
from kiln.data import Dataset, StreamedDataset
from kiln.errors import Interrupted, RegistryError, SpecError, TrainingError
from kiln.settings import absolute, get_settings
from kiln.spec import Domain, JobSpec, TuneSpec, apply_overrides
from kiln.storage import check_places
from kiln.train.runner import (
    TrainOutcome,
    best_checkpoint,
    build_trainer,
    put_for_workers,
    run_history,
    start_autoscaling_coordinator,
)
from kiln.tune import population, trial
from kiln.tune.progress import ENDED_EARLY, SearchView


@dataclass
class SearchOutcome:
    name: str
    path: str
    best_trial: str
    best_config: dict[str, Any]
    best_metric: float
    trials: pd.DataFrame = field(repr=False)
    model: TrainOutcome | None = None

    def to_json(self) -> dict[str, Any]:
        statuses = self.trials["status"].value_counts().to_dict() if "status" in self.trials else {}
        return {
            "search": self.name,
            "path": self.path,
            "best_trial": self.best_trial,
            "best_config": self.best_config,
            "best_metric": self.best_metric,
            "trials": len(self.trials),
            "statuses": statuses,
            "model": self.model.to_json() if self.model else None,
        }


def run_search(
    spec: JobSpec, quiet: bool = False, resume: bool = False, name: str | None = None
) -> SearchOutcome:
    if spec.tune is None:
        raise SpecError(f"{spec.name}: no `tune` section; add one (see jobs/digits-cnn-tune.yaml)")
    storage = absolute(spec.storage_path or get_settings().storage_uri)
    check_places(storage, registers=spec.registration is not None)
    root = f"{storage}/tune"
    name = name or (_latest_search(root, spec.name) if resume else None) or _new_name(spec)
    start_autoscaling_coordinator(spec)  # its first trial's Train run would wait for it
    dataset = None if searches_data(spec.tune) else datasets.build(spec.data, spec.task)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=spec.model_dump(mode="json", by_alias=True),
            search=name,
            storage=storage,
            shared=None if dataset is None else share(dataset),
            population_based=spec.tune.scheduler.population_based,
        ),
        # No CPU: the trial only waits on its Train workers, which hold the resources. Tune
        # refuses an all-zero request, so the trial asks for a token 1 MiB of memory.
        {"cpu": 0, "memory": 2**20},
    )
    path = f"{root}/{name}"
    if resume:
        if not tune.Tuner.can_restore(path):
            raise SpecError(f"no interrupted search of {spec.name} to resume under {root}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec.tune),
            tune_config=tune_config(spec),
            run_config=tune.RunConfig(
                name=name,
                storage_path=root,
                callbacks=[SearchView(name, spec.tune, quiet)],
                verbose=0,
                # Tune stops a trial at its last epoch before PBT sees the result, which would
                # otherwise restart a trial that has finished from a donor's last checkpoint.
                stop={"epoch": spec.train.epochs} if spec.tune.scheduler.population_based else None,
            ),
        )
    # Kiln draws a search's progress itself (SearchView). Tune's newer console output prints
    # its experiment box and a TensorBoard command for Ray's own folder even at verbose=0; its
    # older one (RAY_AIR_NEW_OUTPUT=0, read when the search starts) prints nothing there.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A failed trial is one line of SearchView's, not Tune's traceback (kept in its error.txt).
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    for logger in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(logger).addFilter(_kiln_says_it)
    grid = tuner.fit()
    return _finish(spec, grid, name, path, storage, dataset)


def run_trial(
    config: dict[str, Any],
    base: dict[str, Any],
    search: str,
    storage: str,
    shared: dict[str, Any] | None,
    population_based: bool = False,
) -> None:
    """One trial: the job with this trial's values, as a Ray Train run, on the search's
    dataset (`shared`) unless the search varies the data. Its epochs go to Tune from here
    (kiln.tune.trial); under PBT with checkpoints, and it may start from a donor's
    (kiln.tune.population)."""
    spec = apply_overrides(JobSpec.model_validate(base), config)
    trial_id = tune.get_context().get_trial_id()
    if shared is None:
        dataset, ref = datasets.build(spec.data, spec.task), None
    else:  # in memory: read from the object store without a copy; streamed: the lazy plan
        ref = shared["ref"]
        dataset = shared["streamed"] or ray.get(ref)
    start = population.inherited() if population_based else None
    run_name = population.run_name(search, trial_id, start)  # stable across trial retries
    if population_based:  # PBT may hand any epoch's checkpoint to another trial, later
        spec.checkpoint.keep = max(spec.checkpoint.keep, spec.train.epochs)
    # One report in flight, as Ray's own TuneReportCallback's queue: the run waits for Tune to
    # take each epoch, so a scheduler decides on the epoch the run is at, not on one long past.
    trainer = build_trainer(
        spec,
        dataset,
        run_name,
        storage,
        data_ref=ref,
        start_from=start.checkpoint if start else None,
        reports_in_flight=1,
    )
    report = (
        population.reporter(trial_id, start, run_name)
        if population_based
        else functools.partial(_report_metrics, run=run_name)
    )
    trial.fit_reporting(trainer, report)


def _report_metrics(event: dict[str, Any], run: str) -> None:
    """A trial's epoch as Ray's TuneReportCallback reports it, with its Train run's name."""
    path = {"checkpoint_path": event["checkpoint"]} if "checkpoint" in event else {}
    tune.report({**event["metrics"], **path, "run_name": run})


def searches_data(tune_spec: TuneSpec) -> bool:
    return any(path.startswith("data.") for path in tune_spec.space)


def share(dataset: Dataset | StreamedDataset) -> dict[str, Any]:
    """The dataset in the object store once for the whole search (a trial used to build and
    put its own); a streamed one travels as its Ray Data plan, read by each trial's workers."""
    streamed = dataset if isinstance(dataset, StreamedDataset) else None
    return {"ref": put_for_workers(dataset), "streamed": streamed}


def param_space(tune_spec: TuneSpec) -> dict[str, Any]:
    return {path: _sampler(domain) for path, domain in tune_spec.space.items()}


def _sampler(domain: Domain) -> Any:
    kind, values = domain.kind, getattr(domain, domain.kind)
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    if kind == "randint":
        return tune.randint(values[0], values[1] + 1)  # our bounds are inclusive
    if kind == "choice":
        return tune.choice(values)
    return tune.grid_search(values)


def max_concurrent(spec: JobSpec) -> int:
    """At most as many trials as the cluster's CPUs (and GPUs) can train at once."""
    workers = spec.scaling.num_workers
    count = workers[0] if isinstance(workers, tuple) else workers
    per_worker = spec.scaling.resources_per_worker or {"CPU": 1}
    available = ray.cluster_resources()
    fits = [
        math.floor(available.get(resource, 0) / (amount * count))
        for resource, amount in {
            **per_worker,
            **({"GPU": 1} if spec.scaling.use_gpu else {}),
        }.items()
        if amount > 0
    ]
    return max(1, min([spec.tune.max_concurrent_trials, *fits] if spec.tune else fits))


def tune_config(spec: JobSpec) -> tune.TuneConfig:
    t = spec.tune
    assert t is not None and t.metric is not None and t.mode is not None
    concurrent = max_concurrent(spec)
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg: Any = ConcurrencyLimiter(OptunaSearch(seed=t.seed), max_concurrent=concurrent)
    else:  # Tune ignores TuneConfig.max_concurrent_trials for a variant generator: set it here
        search_alg = BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrent)
    if t.scheduler.population_based:
        scheduler: Any = population.scheduler(spec, param_space(t))
    elif t.scheduler.name == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=spec.train.epochs,
            grace_period=min(t.scheduler.grace_period, spec.train.epochs),
            reduction_factor=t.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        metric=t.metric,
        mode=t.mode,
        num_samples=t.num_samples,
        search_alg=search_alg,
        scheduler=scheduler,
        time_budget_s=t.time_budget_s,
        # A trial's process (kiln, Ray Train and torch imported) runs the next trial too: a
        # trial that Tune stops or pauses ends its Train run at once (kiln.tune.trial).
        reuse_actors=True,
    )


def _stopped(name: str, unfinished: int, results: str) -> Interrupted:
    return Interrupted(
        f"search {name} stopped with {unfinished} trial{'s' * (unfinished > 1)} unfinished; "
        f"nothing registered ({results}); continue it with the same command and "
        f"--resume --name {name}"
    )


def _kiln_says_it(record: logging.LogRecord) -> bool:
    """Tune's lines on a search it ended early name its Python API (Tuner.restore), and a
    trial stopped or failed before its first epoch is a warning with a FileNotFoundError:
    Kiln's error names `kiln tune --resume` and counts the trials unfinished or failed."""
    return not record.getMessage().startswith(TUNE_LINES_KILN_SAYS)


TUNE_LINES_KILN_SAYS = (
    "Experiment has been interrupted",
    "Trials did not complete",
    "Failed to fetch metrics",
)


def _finish(
    spec: JobSpec, grid, name: str, path: str, storage: str, dataset: Any = None
) -> SearchOutcome:
    t = spec.tune
    assert t is not None and t.metric is not None and t.mode is not None
    # Tune ends a search early on Ctrl-C (or SIGUSR1) and returns what it has: the best of a
    # search that did not finish is not the search's best, so it is not registered.
    unfinished = len(ENDED_EARLY.pop(name, []))
    finished = [r for r in grid if r.metrics and t.metric in r.metrics]
    if not finished:
        if unfinished:
            raise _stopped(name, unfinished, "no results yet")
        causes = [getattr(r.error, "cause", r.error) for r in grid if r.error]
        if causes and isinstance(causes[0], SpecError):  # every trial would repeat it
            raise SpecError(f"no trial of {name} ran: {causes[0]}", field=causes[0].field)
        why = str(causes[0]).strip().splitlines()[-1] if causes else "no results"
        raise TrainingError(f"no trial of {name} reported {t.metric}: {why}")
    table = trials_table(grid, t.metric, t.mode)
    best = grid.get_best_result(t.metric, t.mode, scope="all")
    trial_id = trial_id_of(best)
    config = {k: v for k, v in best.config.items()}
    outcome = SearchOutcome(
        name,
        path,
        trial_id,
        config,
        float(table.loc[table.trial_id == trial_id, "best"].iloc[0]),
        table,
    )
    curves = trial_curves_png(grid, t.metric)
    write_files(path, {"results.csv": table.to_csv(index=False).encode(), "curves.png": curves})
    if unfinished:
        raise _stopped(name, unfinished, f"results so far: {path}/results.csv")
    if spec.registration is not None:
        run = best.metrics.get("run_name") or f"{name}-{trial_id}"  # PBT: its latest run
        chain = population.chain_of(best.checkpoint)
        try:
            outcome.model = _register_best(
                spec, config, f"{storage}/{run}", outcome, curves, dataset, chain
            )
        except (RegistryError, OSError) as e:
            raise RegistryError(
                f"{e}. Search {name} finished (results: {path}/results.csv): register its best "
                f"with the same command and --resume --name {name}"
            ) from None
    return outcome


def trials_table(grid, metric: str, mode: str) -> pd.DataFrame:
    rows = []
    for result in grid:
        history = trial_history(result)
        values = history[metric].tolist() if history is not None and metric in history else []
        rows.append(
            {
                "trial_id": trial_id_of(result),
                "status": "ERROR"
                if result.error
                else ("STOPPED" if _stopped_early(result) else "TERMINATED"),
                "epochs": int((result.metrics or {}).get("epoch", 0)),
                "last": values[-1] if values else float("nan"),
                "best": (max if mode == "max" else min)(values) if values else float("nan"),
                "first_epoch_s": _first_epoch_s(history),
                **({"lineage": m["lineage"]} if "lineage" in (m := result.metrics or {}) else {}),
                **{f"config/{k}": v for k, v in result.config.items()},
            }
        )
    return pd.DataFrame(rows)


def trial_history(result) -> pd.DataFrame | None:
    """Every report of a trial, restarts included, from its progress.csv: Tune's result.json
    (what `metrics_dataframe` reads) loses lines when PBT restarts a trial."""
    path = f"{result.path}/progress.csv"
    try:
        with result.filesystem.open_input_stream(path) as stream:
            return pd.read_csv(io.BytesIO(stream.readall()), dtype={"trial_id": str})
    except (FileNotFoundError, OSError, pd.errors.EmptyDataError):
        return result.metrics_dataframe


def trial_id_of(result) -> str:
    """The trial's id, from its folder (`run_trial_<id>_<n>_<params>`): after a PBT exploit
    at its last epoch, a trial's last metrics are its donor's, trial_id included."""
    match = re.search(r"_([0-9a-f]{5}_\d{5})_", base_name(result.path))
    return match.group(1) if match else (result.metrics or {}).get("trial_id", "")


def _first_epoch_s(history: pd.DataFrame | None) -> float:
    """Seconds from the trial's start (its Train run: placement group, worker processes,
    data, model) to its first reported epoch, as Tune timed it."""
    if history is None or history.empty or "time_total_s" not in history:
        return float("nan")
    return float(history["time_total_s"].iloc[0])


def _stopped_early(result) -> bool:
    metrics = result.metrics or {}
    return metrics.get("epoch", 0) < metrics.get("epochs", 0) and not metrics.get(
        "early_stopped", False
    )


def trial_curves_png(grid, metric: str) -> bytes:
    figure, axis = plots.subplots(figsize=(6, 3.5))
    for result in grid:
        history = trial_history(result)
        if history is not None and metric in history:
            label = trial_id_of(result)
            axis.plot(history["epoch"], history[metric], marker=".", alpha=0.8, label=label)
    axis.set(xlabel="epoch", ylabel=metric, title="trials")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    return plots.png(figure)


def _register_best(
    spec: JobSpec,
    config: dict[str, Any],
    run_path: str,
    search: SearchOutcome,
    curves: bytes,
    dataset: Any = None,
    chain: list[dict[str, Any]] | None = None,
) -> TrainOutcome:
    from kiln.train.publish import publish

    trial_spec = apply_overrides(spec, config)
    result = ray.train.Result.from_path(run_path)
    checkpoint, metrics = best_checkpoint(result, trial_spec)
    if dataset is None:  # the search varied the data: this trial's own
        dataset = datasets.build(trial_spec.data, trial_spec.task)
    outcome = TrainOutcome(
        model=trial_spec.model_name,
        version=None,
        alias=None,
        metrics=metrics,
        baselines=dataset.baselines,
        run_name=base_name(run_path),
        run_path=run_path,
        history=run_history(result.checkpoint),
    )
    lineage = {
        "search": {
            "name": search.name,
            "path": search.path,
            "trial_id": search.best_trial,
            "config": config,
            "trials": len(search.trials),
            **({"inherited": chain} if chain else {}),  # PBT: the trials its weights came through
        }
    }
    files = {
        "tune_results.csv": search.trials.to_csv(index=False).encode(),
        "tune_curves.png": curves,
    }
    version, outcome.alias = publish(
        trial_spec, dataset, checkpoint, outcome, extra_files=files, extra_lineage=lineage
    )
    outcome.version = version.version
    return outcome


def _new_name(spec: JobSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _latest_search(root: str, job: str) -> str | None:
    """The newest search of this job under `root` (a local path or any pyarrow URI)."""
    filesystem, base = pafs.FileSystem.from_uri(absolute(root))
    found = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = sorted(
        info.base_name
        for info in found
        if info.type == pafs.FileType.Directory and info.base_name.startswith(f"{job}-2")
    )
    return names[-1] if names else None


def write_files(folder: str, files: dict[str, bytes]) -> None:
    """Files into `folder`, a local path or any URI pyarrow opens (s3://, gs://, file://)."""
    filesystem, base = pafs.FileSystem.from_uri(absolute(folder))
    filesystem.create_dir(base, recursive=True)
    for name, data in files.items():
        with filesystem.open_output_stream(f"{base}/{name}") as out:
            out.write(data)


def base_name(path: str) -> str:
    """The last part of a path or URI (pathlib would read `s3://b/x` as a relative path)."""
    return path.rstrip("/").rsplit("/", 1)[-1]
