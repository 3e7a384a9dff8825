"""PBT's pure parts: perturbed values brought back into their domains, PB2's bounds, a run
continued from another run's optimizer state with its own hyperparameters, and which donor
a trial copies."""

from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.schedulers.pb2 import PB2

from kiln.spec import Domain, TrainSpec
from kiln.train.session import hyperparameters, make_optimizer, make_scheduler, take_hyperparameters
from kiln.tune.population import Inheritance, run_name, scheduler, within_space
from kiln.tune.search import param_space
from kiln.validate import load_spec
from tests.conftest import ROOT


def test_perturbed_values_are_clipped_to_their_range_and_integers_stay_integers():
    space = {
        "lr": Domain(loguniform=(1e-4, 1e-2)),
        "hidden": Domain(randint=(32, 256)),
        "dropout": Domain(uniform=(0.0, 0.5)),
        "batch": Domain(choice=[32, 64]),
    }
    perturbed = {"lr": 0.012, "hidden": 38.4, "dropout": -0.1, "batch": 64}
    assert within_space(perturbed, space) == {"lr": 0.01, "hidden": 38, "dropout": 0.0, "batch": 64}
    assert within_space({"hidden": 300.0}, space) == {"hidden": 256}


def test_pb2_searches_the_bounds_of_the_numeric_train_domains():
    """PB2 shares PBT's trials (the pointer, the chain, the stop at the last epoch); only the
    scheduler differs: a Gaussian-process bandit over the numeric train.* bounds."""
    spec = load_spec(ROOT / "jobs/digits-cnn-pbt.yaml", ["tune.scheduler.name=pb2"])
    assert spec.tune is not None and spec.tune.scheduler.population_based
    pb2 = scheduler(spec, param_space(spec.tune))
    assert isinstance(pb2, PB2)
    assert pb2._hyperparam_bounds == {"train.optimizer.lr": [0.0001, 0.03]}  # not the model's
    assert pb2._perturbation_interval == 2 and pb2._time_attr == "epoch"


def test_a_run_is_named_after_what_it_inherited():
    assert run_name("s", "t1", None) == "s-t1"
    start = Inheritance("/ckpt", [{"trial": "t0", "epoch": 4}])
    assert run_name("s", "t1", start) == "s-t1-from-t0-e4"


def test_an_inherited_optimizer_state_keeps_its_moments_and_takes_this_runs_hyperparameters():
    donor_spec = TrainSpec.model_validate(
        {
            "epochs": 10,
            "optimizer": {"name": "adamw", "lr": 0.1, "weight_decay": 0.1},
            "schedule": {"name": "cosine"},
        }
    )
    own_spec = TrainSpec.model_validate(
        {
            "epochs": 10,
            "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0},
            "schedule": {"name": "cosine"},
        }
    )
    weights = torch.nn.Parameter(torch.ones(3))
    donor = make_optimizer([weights], donor_spec)
    donor_schedule = make_scheduler(donor, donor_spec)
    for _ in range(3):  # three epochs of one step each
        donor.zero_grad()
        (weights**2).sum().backward()
        donor.step()
        donor_schedule.step()
    state, schedule_state = donor.state_dict(), donor_schedule.state_dict()

    own = make_optimizer([weights], own_spec)
    own_schedule = make_scheduler(own, own_spec)
    settings = hyperparameters(own, own_schedule)
    own.load_state_dict(state)
    own_schedule.load_state_dict(schedule_state)
    take_hyperparameters(own, own_schedule, *settings)

    group = own.param_groups[0]
    factor = own_schedule.lr_lambdas[0](3)
    assert own_schedule.last_epoch == 3 and group["weight_decay"] == 0.0
    assert group["lr"] == 0.001 * factor and own_schedule.base_lrs == [0.001]
    assert torch.equal(own.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    own_schedule.step()
    assert own.param_groups[0]["lr"] == 0.001 * own_schedule.lr_lambdas[0](4)


class Controller:
    """What PBT asks of Tune's controller here, for the scheduler's decisions alone: the
    trials, and a pause."""

    search_alg = None

    def __init__(self, *trials):
        self.trials = list(trials)

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return [t for t in self.trials if not t.is_finished()]

    def pause_trial(self, trial, should_checkpoint=True):
        trial.set_status(Trial.PAUSED)


def reported(trial, epoch: int, score: float, checkpoint: str | None = None):
    """A trial's report of an epoch, with the Tune checkpoint Tune registered for it."""
    if checkpoint is not None:
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=Checkpoint(checkpoint), metrics={"epoch": epoch}
        )
    return {"epoch": epoch, "val_accuracy": score, "config": trial.config}


@pytest.mark.parametrize(
    "donor_now",
    [
        Trial.PAUSED,  # waiting for a CPU, with its last checkpoint
        Trial.RUNNING,  # started again from it, and not yet reported (a save would give None)
    ],
)
def test_a_donor_that_was_not_top_at_its_own_report_still_gives_its_latest_checkpoint(
    tmp_path,
    ray_cluster,  # Ray: where PBT stages the log of each exploit
    donor_now,
):
    """Ray's PBT records a donor's checkpoint only when the donor reports in the top quantile;
    one that reported first, alone, had none to give, and the exploit was skipped."""
    spec = load_spec(ROOT / "jobs/digits-cnn-pbt.yaml", ["tune.scheduler.quantile_fraction=0.5"])
    assert spec.tune is not None
    pbt = scheduler(spec, param_space(spec.tune))
    pbt.set_search_properties("val_accuracy", "max")
    storage = StorageContext(str(tmp_path), tmp_path.name)  # a staging folder of its own
    good, poor = (
        Trial("kiln_trial", config={"train.optimizer.lr": 0.003}, storage=storage, stub=True)
        for _ in "ab"
    )
    Path(good.local_experiment_path).mkdir(parents=True)  # Tune makes it as a search starts
    controller = Controller(good, poor)
    for trial in (good, poor):
        pbt.on_trial_add(controller, trial)
        trial.set_status(Trial.RUNNING)

    pbt.on_trial_result(controller, good, reported(good, 2, 0.9, "/runs/good/e2"))  # alone
    assert pbt._trial_state[good].last_checkpoint is None  # Ray recorded nothing to give
    good.set_status(donor_now)
    pbt.on_trial_result(controller, poor, reported(poor, 2, 0.2))

    assert poor.status == Trial.PAUSED  # stopped, to start again from the donor's checkpoint
    assert poor.checkpoint is not None and poor.checkpoint.path == "/runs/good/e2"
