"""The trainer starts no actor a run has no work for, neither its controller nor the driver
that builds it imports torch, a run's processes get no runtime env where they inherit Ray
Train's variables, and the run's events reach their reader from the controller (in order, at
most as many untaken as asked), which the reader can abort at any time."""

import pickle
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import ray
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)
from ray.train.v2._internal.execution.scaling_policy import (
    ElasticScalingPolicy,
    FixedScalingPolicy,
    ResizeDecision,
    create_scaling_policy,
)
from ray.util.state import list_actors

from kiln import data as datasets
from kiln.train import events as events_module
from kiln.train import run_job
from kiln.train.backend import TorchWorkersConfig, process_group_backend
from kiln.train.events import ReportForwarder, RunEvents
from kiln.train.progress import ProgressView
from kiln.train.runner import build_trainer
from kiln.train.runtime_env import InheritingWorkerGroup, controller_runtime_env
from kiln.train.scaling import FixedWorkersNoRequests
from kiln.train.trainer import LeanTorchTrainer, has_state_api
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view
from tests.train import controller_probe

pytestmark = pytest.mark.usefixtures("ray_cluster")
IDLE = (DatasetsCallback, PlacementGroupCleanerCallback)


def loop(config):
    pass


def kinds(trainer) -> list[type]:
    return [type(c) for c in trainer._create_default_callbacks()]


def test_a_run_without_datasets_or_state_api_drops_only_their_actors():
    """Ray's own list, less the dataset manager and the placement-group cleaner: should Ray
    rename or restructure them, this fails rather than Kiln silently starting them again."""
    ray_default = kinds(TorchTrainer(loop))
    assert set(IDLE) <= set(ray_default)
    lean = kinds(LeanTorchTrainer(loop, watch_placement_groups=False))
    assert lean == [k for k in ray_default if k not in IDLE]


def test_a_run_with_datasets_and_state_api_keeps_ray_s_callbacks():
    datasets_given = {"train": ray.data.range(4)}
    assert kinds(LeanTorchTrainer(loop, datasets=datasets_given)) == kinds(
        TorchTrainer(loop, datasets=datasets_given)
    )
    assert PlacementGroupCleanerCallback in kinds(LeanTorchTrainer(loop))


def test_an_in_memory_run_starts_no_dataset_manager_and_no_torch_in_its_controller(
    fresh_home, tmp_path, monkeypatch
):
    """The suite's cluster has the dashboard, so the placement-group cleaner stays. A probe on
    the controller of this two-worker run writes down whether torch was imported there. The
    cluster is local, as `kiln train` starts one (conftest), so the run's controller gets
    the policy without autoscaling requests: Ray still hands its policy to the method that
    swaps it. Its report reaches the view from the controller: no queue actor starts."""
    assert has_state_api()
    probe = tmp_path / "controller.txt"
    monkeypatch.setenv("RAY_TRAIN_CALLBACKS", "tests.train.controller_probe.TorchProbe")
    monkeypatch.setenv(controller_probe.FILE_ENV, str(probe))
    chosen, lean_policy = [], LeanTorchTrainer.lean_policy
    monkeypatch.setattr(
        LeanTorchTrainer,
        "lean_policy",
        lambda self, p: chosen.append(lean_policy(self, p)) or chosen[-1],
    )
    shown, show = [], ProgressView.show
    monkeypatch.setattr(
        ProgressView, "show", lambda view, e: shown.append(e["kind"]) or show(view, e)
    )
    idle = ("DatasetManager", "_QueueActor")
    before = [len(list_actors(filters=[("class_name", "=", c)], limit=1000)) for c in idle]
    earlier = {a.actor_id for a in run_actors()}
    spec = load_spec(ROOT / "jobs/digits-mlp.yaml", ["train.epochs=1"])
    run_job(spec, quiet_view(spec), register=False)
    after = [len(list_actors(filters=[("class_name", "=", c)], limit=1000)) for c in idle]
    assert after == before
    # nor does any of its processes get a runtime env: they inherit Ray Train's variables
    started = [a for a in run_actors() if a.actor_id not in earlier]
    assert sorted(a.class_name for a in started) == sorted(RUN_ACTORS + ("RayTrainWorker",))
    assert {a.serialized_runtime_env for a in started} <= {"{}", "", None}, started
    assert probe.read_text() == "torch imported: False\n"
    assert [type(p) for p in chosen] == [FixedWorkersNoRequests]
    assert shown == ["report"]


RUN_ACTORS = ("EventsController", "RayTrainWorker", "SynchronizationActor")


def run_actors() -> list:
    return [
        a
        for c in RUN_ACTORS
        for a in list_actors(filters=[("class_name", "=", c)], detail=True, limit=1000)
    ]


def test_runtime_envs_hand_ray_train_s_variables_only_where_they_are_not_inherited(monkeypatch):
    """Off a cluster whose processes inherit them, as Ray does: the variables set here to the
    controller (with Ray Train's quiet warning), and the controller's to each worker beside
    the run's own worker_runtime_env. On one (the suite's, as `kiln train` starts it): none."""
    monkeypatch.setenv("RAY_TRAIN_COLLECTIVE_TIMEOUT_S", "99")
    own = {"env_vars": {"MINE": "1"}, "config": {"setup_timeout_seconds": 60}}
    monkeypatch.setenv("KILN_TRAIN_ENV_INHERITED", "0")
    handed = controller_runtime_env()["env_vars"]
    assert handed["RAY_TRAIN_COLLECTIVE_TIMEOUT_S"] == "99"
    assert handed["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] == "0"
    worker = InheritingWorkerGroup._get_worker_runtime_env(own)
    assert worker["env_vars"]["MINE"] == "1"
    assert worker["env_vars"]["RAY_TRAIN_COLLECTIVE_TIMEOUT_S"] == "99"
    monkeypatch.setenv("KILN_TRAIN_ENV_INHERITED", "1")
    assert controller_runtime_env() == {}
    assert InheritingWorkerGroup._get_worker_runtime_env(own) == own


def test_a_driver_that_cannot_tell_keeps_the_cleaner():
    """Not connected (as a Ray Client driver, which has no node of its own): Ray's default."""
    check = "from kiln.train.trainer import has_state_api; print(has_state_api())"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


CONTROLLER_START = """
import pickle, sys
pickle.load(open(sys.argv[1], "rb"))
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("trainer_class", [TorchTrainer, LeanTorchTrainer])
def test_the_controller_starts_without_importing_torch(trainer_class, tmp_path):
    """What a run's controller unpickles when it starts (the run's context and callbacks), in
    a fresh process as the controller's: Ray's own trainer imports torch there, Kiln's not."""
    import ray.cloudpickle

    trainer = trainer_class(loop, scaling_config=ray.train.ScalingConfig(num_workers=2))
    policy = create_scaling_policy(trainer.scaling_config)
    if trainer_class is LeanTorchTrainer:  # as on a cluster that cannot grow
        trainer.request_autoscaling = False
        policy = trainer.lean_policy(policy)
        assert type(policy) is FixedWorkersNoRequests
    start = (trainer.train_run_context, trainer._create_default_callbacks(), policy)
    (tmp_path / "start.pkl").write_bytes(ray.cloudpickle.dumps(start))
    command = [sys.executable, "-c", CONTROLLER_START, str(tmp_path / "start.pkl")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(trainer_class is TorchTrainer)


DRIVER_BUILD = """
import sys
import ray
from kiln import data as datasets
from kiln.train.runner import build_trainer
from kiln.train.runtime_env import InheritingWorkerGroup, controller_runtime_env
from kiln.tune import search  # a trial's function builds its run's trainer there
from kiln.validate import load_spec

ray.init(address=sys.argv[1], log_to_driver=False)
spec = load_spec(sys.argv[2], [])
dataset = datasets.build(spec.data, spec.task)
trainer = build_trainer(spec, dataset, "probe", sys.argv[3])
trainer._get_train_func()  # the run's train function, in its context
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("job", ["digits-cnn", "recsys-two-tower", "tabular-breast-cancer"])
def test_a_driver_builds_a_run_without_importing_torch(job, tmp_path):
    """The driver, or a search's trial, only builds the trainer: the workers import the task's
    loop and torch (a second of CPU that every run and every trial paid before its workers
    started). Some drivers use it for their data: a GAN's trains its evaluation classifier,
    spoken digits' fits its mel bands with the model's own transform."""
    address = ray.get_runtime_context().gcs_address
    job_file = f"{ROOT}/jobs/{job}.yaml"
    command = [sys.executable, "-c", DRIVER_BUILD, address, job_file, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize(
    "requests, datasets_given, workers, policy",
    [
        (False, False, 2, FixedWorkersNoRequests),
        (True, False, 2, FixedScalingPolicy),  # a cluster that may grow hears of the workers
        (False, True, 2, FixedScalingPolicy),  # Ray Data shares the cluster through it
        (False, False, (1, 2), ElasticScalingPolicy),  # elastic runs read its reservations
    ],
)
def test_the_autoscaling_coordinator_is_left_out_only_where_it_has_nothing_to_do(
    requests, datasets_given, workers, policy
):
    trainer = LeanTorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=workers),
        datasets={"train": ray.data.range(4)} if datasets_given else None,
        request_autoscaling=requests,
    )
    assert type(trainer.lean_policy(create_scaling_policy(trainer.scaling_config))) is policy


def test_the_policy_without_requests_asks_for_the_workers_and_never_for_the_coordinator():
    policy = FixedWorkersNoRequests(ray.train.ScalingConfig(num_workers=2))
    policy.after_controller_start(None)
    decision = policy.make_decision_for_non_running_worker_group()
    policy.before_controller_abort()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    assert policy._coordinator_client is None


@pytest.mark.parametrize(
    "backend, resources, chosen",
    [
        (None, {"CPU": 1}, "gloo"),
        (None, {"CPU": 1, "GPU": 1}, "nccl"),
        (None, {"CPU": 1, "GPU": 0.5}, "nccl"),
        ("gloo", {"CPU": 1, "GPU": 1}, "gloo"),
        (None, {"CPU": 1, "TPU": 4}, None),  # Ray's backend sets up TPUs
        ("hccl", {"CPU": 1}, None),
    ],
)
def test_the_process_group_backend_is_ray_s_choice(backend, resources, chosen):
    assert process_group_backend(TorchWorkersConfig(backend=backend), resources) == chosen


def test_a_forwarder_keeps_events_in_order_and_goes_to_the_controller_under_its_key():
    forwarder = ReportForwarder(in_flight=None)
    one_restart = ray.train.RunConfig(failure_config=ray.train.FailureConfig(max_failures=1))
    run = SimpleNamespace(run_config=one_restart)
    forwarder.after_report(run, [{"epoch": 1}, {"epoch": 1}], None)
    forwarder.after_exception(run, {1: RuntimeError("boom\nworker 1 died")})
    forwarder.after_report(run, [{"epoch": 2}], None)
    forwarder.after_exception(run, {0: RuntimeError("worker 0 died")})
    events = forwarder.take(timeout=0)
    assert [e["kind"] for e in events] == ["report", "failure", "report", "failure"]
    assert [e["metrics"]["epoch"] for e in events if e["kind"] == "report"] == [1, 2]
    failure = {"kind": "failure", "ranks": "1", "reason": "worker 1 died", "retried": True}
    assert events[1] == failure  # the one restart max_failures allows; then none
    assert events[3] == {
        "kind": "failure",
        "ranks": "0",
        "reason": "worker 0 died",
        "retried": False,
    }
    assert forwarder.take(timeout=0) == []
    there = pickle.loads(pickle.dumps(forwarder))  # as the controller unpickles it
    assert (there.key, there.in_flight) == (forwarder.key, None)
    assert events_module._KEPT[forwarder.key] is there


def test_with_one_in_flight_a_report_waits_for_the_reader_and_closing_lets_it_go():
    forwarder = ReportForwarder(in_flight=1)
    forwarder.after_report(None, [{"epoch": 1}], None)
    second = threading.Thread(target=forwarder.after_report, args=(None, [{"epoch": 2}], None))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # the control loop waits: the reader has not taken epoch 1
    assert [e["metrics"]["epoch"] for e in forwarder.take(timeout=1)] == [1]
    second.join(timeout=5)
    assert not second.is_alive()
    assert [e["metrics"]["epoch"] for e in forwarder.take(timeout=1)] == [2]
    forwarder.after_report(None, [{"epoch": 3}], None)
    third = threading.Thread(target=forwarder.after_report, args=(None, [{"epoch": 4}], None))
    third.start()
    forwarder.close()  # the reader is gone: the run goes on to its abort
    third.join(timeout=5)
    assert not third.is_alive()


@ray.remote(num_cpus=0)
class StandInController:
    def __init__(self):
        self.calls: list[str] = []

    def close_events(self, key: str) -> None:
        self.calls.append("close_events")

    def abort(self) -> None:
        self.calls.append("abort")

    def seen(self) -> list[str]:
        return self.calls


def test_an_abort_before_the_controller_exists_aborts_it_as_it_is_attached():
    events = RunEvents()
    fit = threading.Thread(target=lambda: None)
    fit.start()
    events.abort(fit)  # Ctrl-C while the run is still being set up
    controller = StandInController.remote()
    events.attach(controller)
    assert sorted(ray.get(controller.seen.remote())) == ["abort", "close_events"]


def test_a_run_whose_reader_stops_taking_waits_then_ends_at_once_on_abort(fresh_home):
    """One report in flight (as a search's trials): the run waits at its second report for
    the reader, which aborts instead, as Tune stopping a trial does."""
    spec = load_spec(ROOT / "jobs/digits-mlp.yaml", ["train.epochs=20"])
    dataset = datasets.build(spec.data, spec.task)
    storage = str(fresh_home / "runs")
    trainer = build_trainer(spec, dataset, "abort-probe", storage, reports_in_flight=1)
    fit = threading.Thread(target=trainer.fit, daemon=True)
    fit.start()
    first: list[dict] = []
    while not first and fit.is_alive():
        first = trainer.events.take(timeout=1)
    assert [e["kind"] for e in first] == ["report"]
    time.sleep(2)  # epochs of a fraction of a second: the run would be far on, not waiting
    assert fit.is_alive()
    started = time.monotonic()
    trainer.events.abort(fit)
    assert not fit.is_alive() and time.monotonic() - started < 20
    later = [e["metrics"]["epoch"] for e in trainer.events.take(timeout=0)]
    assert later in ([], [2])  # epoch 2 waited untaken; epoch 3 never went on
