"""Population Based Training (PBT, and PB2, which picks the next values with a Gaussian-process
bandit over their bounds instead of perturbing them) on Ray Train V2.

A Train V2 run reports to Tune through its controller, which carries metrics but no
checkpoint, and PBT can only exploit a trial that reported one. A trial reports each epoch to
Tune itself (kiln.tune.trial); under PBT with a small Tune checkpoint that points at the Train
checkpoint of that epoch (`inherit.json`). A trial that PBT restarts
from a donor's Tune checkpoint starts a new Train run from the donor's Train checkpoint: its
weights, optimizer moments and epochs, with the trial's own (mutated) hyperparameters.

The pointer also carries the chain of trials the weights came through, oldest first, each
with the epoch it trained to: the registered model's lineage names it.
"""

import functools
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.train._internal.session import _FutureTrainingResult
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from kiln.spec import Domain, JobSpec

POINTER = "inherit.json"


@dataclass
class Inheritance:
    checkpoint: str  # the Train checkpoint's path in the search's storage
    chain: list[dict[str, Any]] = field(default_factory=list)  # [{"trial", "epoch"}, ...]

    @property
    def donor(self) -> str:
        return self.chain[-1]["trial"] if self.chain else ""


def mutable(path: str, domain: Domain) -> bool:
    """What PBT may change in a trial that continues from another's weights: a sampled
    training value. Model and data values travel with the weights (the donor's are copied):
    a new hidden size or vocabulary would not fit them. Grid values stay as enumerated."""
    return domain.samples and path.startswith("train.")


def scheduler(spec: JobSpec, samplers: dict[str, Any]) -> PopulationBasedTraining:
    """PBT or PB2 over the space's mutable domains (PB2: the numeric ones, by their bounds; a
    loguniform range is searched on a linear scale, as Ray's PB2 does)."""
    assert spec.tune is not None
    t, space = spec.tune.scheduler, spec.tune.space
    explore = functools.partial(within_space, space=space)
    if t.name == "pb2":
        bounds: dict[str, Any] = {
            path: list(getattr(domain, domain.kind))
            for path, domain in space.items()
            if mutable(path, domain) and domain.kind in ("uniform", "loguniform", "randint")
        }
        return PopulationBandit(
            time_attr="epoch",
            perturbation_interval=t.perturbation_interval,
            quantile_fraction=t.quantile_fraction,
            hyperparam_bounds=bounds,
            custom_explore_fn=explore,
            synch=t.synchronous,
        )
    mutations = {path: samplers[path] for path, domain in space.items() if mutable(path, domain)}
    return Population(
        time_attr="epoch",
        perturbation_interval=t.perturbation_interval,
        quantile_fraction=t.quantile_fraction,
        resample_probability=t.resample_probability,
        hyperparam_mutations=mutations,
        custom_explore_fn=explore,
        synch=t.synchronous,
    )


class Population(PopulationBasedTraining):
    """Ray's PBT, whose donors always have a checkpoint to give.

    Ray records a trial's checkpoint for exploiting only when the trial itself reaches a
    perturbation point in the top quantile; a trial that reached its last one before the
    others had scores (alone, or first out of a queue of trials waiting for CPUs) is skipped as
    a donor, and in a population that runs a few trials at a time most exploits were skipped
    ('no checkpoint for trial ...'). Such a donor gives the checkpoint it is saving, else the
    latest that Tune holds of it (every report of a Kiln trial carries one; a trial restarted
    from another's holds that one until it reports), else a save of its last report.
    """

    def _checkpoint_or_exploit(
        self, trial: Trial, tune_controller: Any, upper_quantile: list, lower_quantile: list
    ) -> None:
        if trial in lower_quantile:
            for donor in upper_quantile:
                state = self._trial_state[donor]
                if not state.last_checkpoint:
                    state.last_checkpoint = self._donation(donor, tune_controller)
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)

    def _donation(self, donor: Trial, tune_controller: Any) -> Any:
        saving = donor.temporary_state.saving_to
        if isinstance(saving, _FutureTrainingResult):
            return saving
        if donor.checkpoint is None and donor.status == Trial.RUNNING:
            last = self._trial_state[donor].last_result
            return tune_controller._schedule_trial_save(donor, result=last)
        return donor.checkpoint


class PopulationBandit(Population, PB2):
    """PB2 with the same donors."""


def within_space(config: dict[str, Any], space: dict[str, Domain]) -> dict[str, Any]:
    """A perturbed config brought back into its domains: PBT multiplies a value by 0.8 or 1.2,
    which can leave a range or make an integer fractional."""
    for path, domain in space.items():
        if domain.kind in ("uniform", "loguniform", "randint") and path in config:
            low, high = getattr(domain, domain.kind)
            value = min(max(config[path], low), high)
            config[path] = int(round(value)) if domain.kind == "randint" else float(value)
    return config


def inherited() -> Inheritance | None:
    """What this trial was handed: a donor's pointer after an exploit, its own after a
    restart, nothing at its first start."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return Inheritance(**json.loads(Path(folder, POINTER).read_text()))


def run_name(search: str, trial_id: str, start: Inheritance | None) -> str:
    """Stable across retries of the same start (Train resumes the run), new per inheritance."""
    if start is None or not start.chain:
        return f"{search}-{trial_id}"
    return f"{search}-{trial_id}-from-{start.donor}-e{start.chain[-1]['epoch']}"


def reporter(trial_id: str, start: Inheritance | None, run: str) -> Callable[[dict], None]:
    """What a PBT trial tells Tune of each checkpointed Train report: its metrics, and a
    Tune checkpoint that points at the Train checkpoint, with the chain that led to it."""
    before = start.chain if start else []
    if before and before[-1]["trial"] == trial_id:  # a restart from its own checkpoint
        before = before[:-1]

    def report(event: dict[str, Any]) -> None:
        if "checkpoint" in event:
            link = {"trial": trial_id, "epoch": event["metrics"]["epoch"]}
            _report(event, [*before, link], run)

    return report


def _report(event: dict[str, Any], chain: list[dict[str, Any]], run: str) -> None:
    pointer = Inheritance(event["checkpoint"], chain)
    metrics = {
        **event["metrics"],
        "checkpoint_path": pointer.checkpoint,
        "run_name": run,
        "lineage": " > ".join(f"{link['trial']}@{link['epoch']}" for link in chain),
        "inherited_from": chain[-2]["trial"] if len(chain) > 1 else "",
    }
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, POINTER).write_text(json.dumps(pointer.__dict__))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def chain_of(tune_checkpoint: Any) -> list[dict[str, Any]]:
    """The chain in a trial's last Tune checkpoint (none for a trial without one)."""
    if tune_checkpoint is None:
        return []
    with tune_checkpoint.as_directory() as folder:
        pointer = Path(folder, POINTER)
        return json.loads(pointer.read_text())["chain"] if pointer.exists() else []
