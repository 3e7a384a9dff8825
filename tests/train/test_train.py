"""Training on a real local Ray cluster: accuracy, reload, forecasting baseline, CLI output,
and a worker killed mid-run."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import ray

from kiln import data as datasets
from kiln.cli import main
from kiln.errors import RegistryError, StorageError
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.train import run_job
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view, run_kiln, start_in_foreground
from tests.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("ray_cluster")


def train(job: str, *overrides: str):
    spec = load_spec(ROOT / "jobs" / job, overrides)
    return spec, run_job(spec, quiet_view(spec))


def test_digits_cnn_on_two_workers_reaches_97_percent(digits_cnn):
    spec, outcome = digits_cnn
    assert spec.scaling.num_workers == 2
    assert outcome.metrics["val_accuracy"] >= 0.97, outcome.metrics
    assert outcome.version is not None and outcome.alias == "staging"


def test_registered_model_reloads_to_the_same_accuracy(digits_cnn):
    spec, outcome = digits_cnn
    loaded = load_model(ModelRegistry.open(), f"{outcome.model}@{outcome.version}")
    data = datasets.build(spec.data, spec.task)
    metrics = evaluate(loaded.module, data.x_val, data.y_val, data.schema)
    assert metrics["val_accuracy"] == pytest.approx(outcome.metrics["val_accuracy"], abs=1e-9)


def test_registered_version_holds_card_curves_and_lineage(digits_cnn):
    _, outcome = digits_cnn
    registry = ModelRegistry.open()
    version = registry.resolve(f"{outcome.model}@staging")
    assert set(version.manifest["files"]) >= {
        "weights.safetensors",
        "model.json",
        "spec.yaml",
        "metrics.json",
        "lineage.json",
        "curves.png",
        "reference.npy",
    }
    assert registry.read(version, "curves.png").startswith(b"\x89PNG")
    reference = np.load(io.BytesIO(registry.read(version, "reference.npy")))
    assert reference.shape[1:] == (1, 8, 8) and 1000 <= len(reference) <= 2000  # training rows
    lineage = registry.read_json(version, "lineage.json")
    assert lineage["run_name"] == outcome.run_name and len(lineage["data_fingerprint"]) == 64
    assert registry.read_json(version, "model.json")["inputs"][0]["shape"] == [-1, 1, 8, 8]


def test_forecaster_beats_seasonal_naive():
    _, outcome = train("timeseries-lstm.yaml")
    model_mae = outcome.metrics["val_mae"]
    naive_mae = outcome.baselines["seasonal_naive_val_mae"]
    print(f"\nCO2 validation MAE: LSTM {model_mae:.3f} ppm, seasonal naive {naive_mae:.3f} ppm")
    assert model_mae < naive_mae


def test_a_served_forecaster_takes_raw_windows_and_answers_in_ppm():
    """The last 24 monthly values as they are (ppm), the next month's forecast in ppm: the
    served model's error over the validation windows is the registered val_mae."""
    import statsmodels.api as sm

    from kiln.serve.replica.predictor import Predictor

    _, outcome = train("timeseries-lstm.yaml", "train.epochs=8", "train.early_stopping=null")
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    series = weekly.resample("MS").mean().interpolate().to_numpy(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(series, 25)  # 24 values, then the next
    validation = windows[-round(len(windows) * 0.2) :]
    registry = ModelRegistry.open()
    predictor = Predictor.load(registry, registry.resolve(f"co2-lstm@{outcome.version}"))
    forecasts = predictor.run(predictor.prepare(0, validation[:, :24, None]))["output"]
    assert forecasts.min() > 300 and forecasts.max() < 400  # ppm, not steps of the scale
    mae = np.abs(forecasts[:, 0] - validation[:, 24]).mean()
    assert mae == pytest.approx(outcome.metrics["val_mae"], rel=1e-3)


def test_train_json_output(capsys):
    main(
        [
            "train",
            str(ROOT / "jobs/tabular-breast-cancer.yaml"),
            "--json",
            "--set",
            "train.epochs=3",
            "--set",
            "register.name=bc-json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "bc-json" and result["version"] == 1
    assert 0.5 < result["metrics"]["val_accuracy"] <= 1.0
    assert os.path.isdir(result["run_path"])


def test_a_registry_that_fails_keeps_the_run_to_register_later(fresh_home, monkeypatch):
    """A registry that cannot be written is refused before training; one that fails when
    the run registers (an outage, a permission taken away) names the finished run, and the
    same job with its --run-name registers it without training again."""
    from kiln.train import publish as publishing

    spec = load_spec(
        ROOT / "jobs/tabular-breast-cancer.yaml", ["train.epochs=2", "register.name=bc-late"]
    )
    monkeypatch.setenv("KILN_REGISTRY", "/dev/null/registry")
    with pytest.raises(StorageError, match="cannot write to the registry /dev/null/registry"):
        run_job(spec, quiet_view(spec))

    registry = fresh_home / "registry"
    monkeypatch.setenv("KILN_REGISTRY", str(registry))
    publish = publishing.publish

    def after_an_outage(*args, **kwargs):
        shutil.rmtree(registry)
        registry.write_text("")  # the registry's folder is now a file: writes fail for real
        return publish(*args, **kwargs)

    monkeypatch.setattr(publishing, "publish", after_an_outage)
    with pytest.raises(RegistryError) as failed:
        run_job(spec, quiet_view(spec))
    run_name = re.search(r"--run-name (\S+)$", str(failed.value))[1]
    assert f"Run {run_name} finished and keeps its checkpoints in" in str(failed.value)

    monkeypatch.setattr(publishing, "publish", publish)
    registry.unlink()
    view = quiet_view(spec)
    outcome = run_job(spec, view, run_name=run_name)
    assert outcome.version == 1 and outcome.run_name == run_name
    assert not [e for e in view.events if e["kind"] == "report"]  # no epoch trained again


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB filesystem of its own (tmpfs), where a few checkpoints fill it."""
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_at_once_and_it_continues_once_freed(
    fresh_home, small_disk, monkeypatch
):
    """Restarts would write the same checkpoint to the same full disk: the run ends at the
    first failure, saying where and how to continue; with room again it continues from its
    last checkpoint."""
    monkeypatch.setenv("KILN_STORAGE", str(small_disk / "runs"))
    overrides = ["train.epochs=8", "train.early_stopping=null", "checkpoint.keep=8"]
    spec = load_spec(ROOT / "jobs/digits-cnn.yaml", overrides)
    view = quiet_view(spec)
    with pytest.raises(StorageError) as full:
        run_job(spec, view)
    message = str(full.value)
    assert "no space left on device" in message and f"run storage {small_disk}/runs" in message
    assert not [e for e in view.events if e["kind"] == "failure"]  # no restart was tried
    epochs = [e["metrics"]["epoch"] for e in view.events if e["kind"] == "report"]
    assert epochs and f"stopped after epoch {epochs[-1]}" in message
    run_name = re.search(r"--run-name (\S+)$", message)[1]

    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)
    resumed = run_job(spec, quiet_view(spec), run_name=run_name)
    assert resumed.version == 1 and resumed.history[-1]["epoch"] == 8
    assert resumed.history[-1]["resumed_from"] == epochs[-1]  # its last reported checkpoint


def train_worker_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")
    ]


@pytest.mark.slow
def test_killed_worker_resumes_from_its_last_checkpoint(fresh_home):
    spec = load_spec(
        ROOT / "jobs/digits-mlp.yaml",
        ["train.epochs=40", "train.early_stopping=null", "register.name=resilient"],
    )
    view = quiet_view(spec)
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(outcome=run_job(spec, view)))
    thread.start()

    def epochs_reported() -> int:
        return max(
            (e["metrics"]["epoch"] for e in list(view.events) if e["kind"] == "report"), default=0
        )

    deadline = time.monotonic() + 120
    while epochs_reported() < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = train_worker_pids()
    assert pids, "no training worker to kill"
    reached = epochs_reported()
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=240)

    outcome = done["outcome"]
    assert outcome.failures >= 1
    resumed = [
        e["metrics"]["resumed_from"]
        for e in view.events
        if e["kind"] == "report" and e["metrics"]["resumed_from"] >= 0
    ]
    assert resumed, "the run never resumed from a checkpoint"
    assert resumed[0] >= reached - 1, f"killed after epoch {reached}, resumed from {resumed[0]}"
    assert [h["epoch"] for h in outcome.history] == list(range(1, 41))
    assert ModelRegistry.open().versions("resilient") == [outcome.version] == [1]


@pytest.mark.slow
def test_a_job_whose_workers_cannot_start_fails_naming_what_is_missing(fresh_home):
    """2 workers of 1 CPU on a 2-CPU cluster where something else holds 1.5 CPUs: Ray Train
    would retry the placement group forever; Kiln gives up after scaling.start_timeout_s."""
    import ray

    from kiln.errors import TrainingError

    @ray.remote(num_cpus=1.5)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    spec = load_spec(ROOT / "jobs/digits-mlp.yaml", ["scaling.start_timeout_s=8"])
    started = time.monotonic()
    try:
        with pytest.raises(TrainingError) as failed:
            run_job(spec, quiet_view(spec))
    finally:
        ray.kill(holder)
    message = str(failed.value)
    assert "could not start within 8 s (scaling.start_timeout_s)" in message
    assert "need 2 CPU (free 0.5 of 2" in message
    assert time.monotonic() - started < 60


def test_a_users_lazy_model_trains_and_a_misfit_one_ends_its_run_at_once(fresh_home, tmp_path):
    """A network with lazy layers (nn.LazyLinear) is sized before DDP sees it (DDP refused
    it, on every restart). One whose first layer is sized for other data is a mistake: one
    line, the spec's exit code, and no restart (each of the two it had repeated it)."""
    from kiln.errors import SpecError

    user = ["model.family=null", "model.params={}", "train.epochs=3", "register=null"]
    _, outcome = train("digits-mlp.yaml", *user, "model.import=tests.models.custom:lazy")
    assert outcome.metrics["val_accuracy"] > 0.6  # 3 epochs of 16 units; chance is 0.1

    builds = tmp_path / "builds.log"
    misfit = [*user, "model.import=tests.models.custom:sized_for_other_data"]
    spec = load_spec(ROOT / "jobs/digits-mlp.yaml", [*misfit, f"model.params.log={builds}"])
    assert spec.failure.max_failures == 2
    view = quiet_view(spec)
    started = time.monotonic()
    with pytest.raises(SpecError, match=r"does not fit the data \(input shape \[1, 8, 8\]") as e:
        run_job(spec, view)
    assert e.value.exit_code == 2
    assert view.events == []  # no failure shown as "restarting"
    assert len(builds.read_text().splitlines()) <= 2  # each worker once: no restart
    print(f"refused in {time.monotonic() - started:.1f} s")


def test_a_run_whose_loss_diverges_stops_and_registers_nothing(fresh_home, tmp_path):
    """Plain SGD at a learning rate of 1,000 without gradient clipping: the loss is NaN by
    the end of the first epoch. The run stops there (not after every epoch) and nothing is
    registered."""
    from kiln.errors import TrainingError
    from kiln.spec import parse_spec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": x[:, 0] * 3}).to_csv(tmp_path / "t.csv")
    table = {"name": "table", "path": str(tmp_path / "t.csv"), "params": {"label": "y"}}
    train = {"epochs": 4, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 1000}}
    spec = parse_spec(
        {
            "name": "blows-up",
            "task": "regression",
            "data": table,
            "model": {"family": "mlp", "params": {"hidden": [8]}},
            "train": {**train, "grad_clip": None},
            "scaling": {"num_workers": 2},
        },
        "blows-up",
    )
    view = quiet_view(spec)
    with pytest.raises(TrainingError, match="training diverged at epoch 1 .*nothing registered"):
        run_job(spec, view)
    assert [e["metrics"]["epoch"] for e in view.events if e["kind"] == "report"] == [1]
    assert ModelRegistry.open().versions("blows-up") == []


def test_a_table_regressor_beats_the_mean_and_answers_in_the_labels_units(fresh_home, tmp_path):
    """scikit-learn's diabetes table (a disease score of 25-346): trained on the label's
    z-score, measured and served in its units. Unscaled, the same job ended worse than
    predicting the mean (val_mae 108 after 30 epochs against 72)."""
    from sklearn.datasets import load_diabetes

    from kiln.data.stream import in_validation
    from kiln.serve.replica.predictor import Predictor
    from kiln.spec import parse_spec

    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame.to_csv(tmp_path / "diabetes.csv", index=False)
    table = {"name": "table", "path": str(tmp_path / "diabetes.csv"), "params": {"label": "target"}}
    job = {
        "name": "diabetes",
        "task": "regression",
        "data": table,
        "model": {"family": "mlp", "params": {"hidden": [64, 64]}},
        "train": {"epochs": 20, "batch_size": 32},
        "scaling": {"num_workers": 2},
        "checkpoint": {"metric": "val_mae", "mode": "min"},
        "register": {"name": "diabetes"},
    }
    spec = parse_spec(job, "diabetes")
    outcome = run_job(spec, quiet_view(spec))
    assert outcome.metrics["val_mae"] < 0.75 * outcome.baselines["mean_val_mae"]
    registry = ModelRegistry.open()
    predictor = Predictor.load(registry, registry.resolve("diabetes@1"))
    val = frame[in_validation(frame, 0.2, 0)]
    x = val.drop(columns="target").to_numpy(np.float32)
    served = predictor.run(predictor.prepare(0, x))["output"][:, 0]
    mae = np.abs(served - val.target.to_numpy()).mean()
    assert mae == pytest.approx(outcome.metrics["val_mae"], rel=1e-4)


def test_resources_the_runs_own_placement_group_holds_are_not_a_shortfall():
    """While the workers start, their placement group holds the CPUs: the wait notice must
    not blame other jobs for them (it did: "free 0 of 2: other jobs ... hold the rest").
    Small bundles, so that the group is placed beside whatever else the session runs."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from kiln.train.runner import placed, shortfall

    before = set(ray.util.placement_group_table())
    group = placement_group([{"CPU": 0.01}, {"CPU": 0.01}])
    ray.get(group.ready(), timeout=60)
    try:
        assert placed({"CPU": 0.02}, before) and shortfall({"CPU": 0.02}, before) is None
        assert not placed({"CPU": 0.02}, before | {group.id.hex()})  # another run's group
        assert not placed({"CPU": 0.03}, before)  # it holds less than the workers need
    finally:
        remove_placement_group(group)


def test_a_shortfall_blames_other_jobs_only_for_what_the_cluster_has():
    from kiln.train.runner import lacking

    assert lacking("CPU", 2, 1, 4) == (
        "2 CPU (free 1 of 4: other jobs or Serve replicas hold the rest)"
    )
    assert lacking("CPU", 2, 1, 1) == (
        "2 CPU (the cluster has 1 in all: add nodes, or lower scaling.num_workers or "
        "resources_per_worker)"
    )


def test_a_trainer_has_its_workers_reports_polled_often(ray_cluster, monkeypatch, tmp_path):
    """Ray Train's controller takes a worker's report only when it polls (every 2 s by
    default), and a worker with a report waiting blocks: digits-cnn's 0.5 s epochs took 2 s
    each. Ray Train reads the interval from the process that calls fit(); a value the user
    set there stays."""
    from kiln.train.runner import build_trainer

    spec = load_spec(ROOT / "jobs/digits-cnn.yaml")
    dataset = datasets.build(spec.data, spec.task)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    build_trainer(spec, dataset, "poll", str(tmp_path), [])
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    build_trainer(spec, dataset, "poll", str(tmp_path), [])
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"


def test_kill_stops_a_run_as_ctrl_c_does(fresh_home):
    """SIGTERM (`kill`, `timeout`, `ray job stop`, Kubernetes): Ray's driver handler exited
    at once after a stack dump from Ray's core ('*** SIGTERM received ...'), with no word of
    the run or how to continue it."""
    _, stderr, _ = _stopped_at_epoch_2("killed", signal.SIGTERM)
    assert re.search(r"run (\S+) stopped after epoch \d+; nothing registered", stderr)
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr


def _stopped_at_epoch_2(name: str, stop: int) -> tuple[list[str], str, dict[str, str]]:
    """`kiln train` of 30 digits-mlp epochs, sent `stop` after its second: (command, its
    stderr, env); it exited 130."""
    command = [
        *(sys.executable, "-m", "kiln", "train", str(ROOT / "jobs/digits-mlp.yaml")),
        *("--set", "train.epochs=30", "--set", "train.early_stopping=null"),
        *("--set", f"register.name={name}"),
    ]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = start_in_foreground(command, env)
    assert driver.stdout is not None
    for line in driver.stdout:
        if line.startswith("epoch   2/"):
            break
    driver.send_signal(stop)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-2000:]
    return command, stderr, env


def test_ctrl_c_stops_a_run_that_then_resumes_from_its_checkpoint(fresh_home):
    command, stderr, env = _stopped_at_epoch_2("interrupted", signal.SIGINT)  # a Ctrl-C
    stopped = re.search(r"run (\S+) stopped after epoch \d+; nothing registered", stderr)
    assert stopped and f"--run-name {stopped[1]}" in stderr and "Traceback" not in stderr
    assert ModelRegistry.open().versions("interrupted") == []

    resumed = run_kiln(*command[3:], "--run-name", stopped[1], env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(resumed at epoch" in resumed.stdout
    assert ModelRegistry.open().versions("interrupted") == [1]
