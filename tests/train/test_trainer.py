"""The trainer starts no actor a run has no work for, neither its controller nor the driver
that builds it imports torch, and the controller's handle reaches the driver as the run
starts, ahead of its reports."""

import subprocess
import sys
import threading

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
from ray.util.queue import Queue
from ray.util.state import list_actors
from rich.console import Console

from kiln.train import run_job
from kiln.train.backend import TorchWorkersConfig, process_group_backend
from kiln.train.progress import ControllerHandle, ProgressView, ReportForwarder, abort
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


def test_an_in_memory_run_starts_no_dataset_manager_no_torch_in_its_controller_handle_first(
    fresh_home, tmp_path, monkeypatch
):
    """The suite's cluster has the dashboard, so the placement-group cleaner stays. A probe on
    the controller of this two-worker run writes down whether torch was imported there. The
    cluster is local, as `kiln train` starts one (conftest), so the run's controller gets
    the policy without autoscaling requests: Ray still hands its policy to the method that
    swaps it. The controller's handle reaches the driver before the run's report."""
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
    before = len(list_actors(filters=[("class_name", "=", "DatasetManager")], limit=1000))
    spec = load_spec(ROOT / "jobs/digits-mlp.yaml", ["train.epochs=1"])
    run_job(spec, quiet_view(spec), register=False)
    after = len(list_actors(filters=[("class_name", "=", "DatasetManager")], limit=1000))
    assert after == before
    assert probe.read_text() == "torch imported: False\n"
    assert [type(p) for p in chosen] == [FixedWorkersNoRequests]
    assert shown == ["controller", "report"]  # Ray Train called Kiln's controller hook


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
from kiln.tune import search  # a trial's function builds its run's trainer there
from kiln.validate import load_spec

ray.init(address=sys.argv[1], log_to_driver=False)
spec = load_spec(sys.argv[2], [])
dataset = datasets.build(spec.data, spec.task)
trainer = build_trainer(spec, dataset, "probe", sys.argv[3], callbacks=[])
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


@ray.remote(num_cpus=0)
class Controller:
    """Stands in for a run's controller: it records an abort, sends its handle as it starts
    and forwards reports as the real controller does, through Kiln's callbacks."""

    def __init__(self, queue: Queue):
        self.handle = ControllerHandle(queue)
        self.forwarder = ReportForwarder(queue)
        self.aborted = False

    def start(self) -> None:
        self.handle.after_controller_start(None)

    def report(self, epoch: int) -> None:
        self.forwarder.after_report(None, [{"epoch": epoch}], None)

    def abort(self) -> None:
        self.aborted = True

    def was_aborted(self) -> bool:
        return self.aborted


def test_the_controller_s_handle_comes_once_as_it_starts_and_is_not_shown():
    queue = Queue(actor_options={"num_cpus": 0})
    controller = Controller.remote(queue)
    ray.get(controller.start.remote())
    ray.get([controller.report.remote(1), controller.report.remote(2)])
    events = [queue.get(timeout=10) for _ in range(3)]
    # Ray keeps no order between calls to an async actor (the queue's), so the handle, put
    # without waiting, may come after a report (abort() then waits for it); reports keep theirs.
    assert sorted(e["kind"] for e in events) == ["controller", "report", "report"]
    assert [e["metrics"]["epoch"] for e in events if e["kind"] == "report"] == [1, 2]
    assert queue.empty()
    view = ProgressView("job", 2, "epoch", Console(quiet=True), quiet=True)
    for event in events:
        view.show(event)
    assert [e["kind"] for e in view.events] == ["report", "report"]  # the handle is not shown
    queue.shutdown()


def test_an_abort_before_any_report_reaches_the_controller_through_its_handle():
    queue = Queue(actor_options={"num_cpus": 0})
    controller = Controller.remote(queue)
    ray.get(controller.start.remote())
    handle = queue.get(timeout=10)["controller"]
    fit = threading.Thread(target=lambda: None)
    fit.start()
    abort(handle, queue, fit, reported=False)
    assert ray.get(controller.was_aborted.remote())


def test_an_abort_after_a_report_that_overtook_the_handle_waits_for_it():
    queue = Queue(actor_options={"num_cpus": 0})
    controller = Controller.remote(queue)
    ray.get(controller.report.remote(1))
    assert queue.get(timeout=10)["kind"] == "report"  # the reader has a report, no handle yet
    controller.start.remote()
    fit = threading.Thread(target=lambda: None)
    fit.start()
    abort(None, queue, fit, reported=True)
    assert ray.get(controller.was_aborted.remote())


def test_an_abort_with_a_handle_that_cannot_be_restored_fails_the_run_s_next_report():
    """As on a Ray Client driver: the queue is shut, so the controller's next report fails."""
    queue = Queue(actor_options={"num_cpus": 0})
    controller = Controller.remote(queue)
    fit = threading.Thread(target=lambda: None)
    fit.start()
    abort(b"not a pickled handle", queue, fit, reported=False)
    with pytest.raises(ray.exceptions.RayError):
        ray.get(controller.report.remote(2), timeout=30)
    assert not ray.get(controller.was_aborted.remote())
