"""`kiln tune` on the session's Ray cluster: ASHA stops trials, Optuna is seeded, an
interrupted search resumes without rerunning finished trials."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import ray.train

from kiln import data as datasets
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.spec import apply_overrides
from kiln.tune import run_search
from kiln.tune.search import param_space, tune_config
from kiln.validate import load_spec
from tests.conftest import ROOT, start_in_foreground
from tests.evaluation import evaluate

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

NOISE = 0.05  # validation accuracy: one of 360 digits is 0.003

SMALL = [
    "train.epochs=4",
    "tune.num_samples=6",
    "tune.scheduler.grace_period=1",
    "model.params.channels=[16, 32]",
    "train.optimizer.lr=0.003",
]


def test_asha_stops_trials_and_registers_the_best(fresh_home):
    spec = load_spec(ROOT / "jobs/digits-cnn-tune.yaml", SMALL)
    before = {entry.split()[-1] for entry in live_search_actors()}
    outcome = run_search(spec, quiet=True)
    statuses = outcome.trials["status"].value_counts().to_dict()
    print(f"\nASHA trials: {statuses}; best {outcome.best_metric:.4f} ({outcome.best_trial})")
    assert statuses.get("STOPPED", 0) >= 1
    assert outcome.model is not None and outcome.model.version == 1

    registry = ModelRegistry.open()
    version = registry.resolve(f"{outcome.model.model}@{outcome.model.version}")
    lineage = registry.read_json(version, "lineage.json")
    assert lineage["search"]["trial_id"] == outcome.best_trial and lineage["search"]["trials"] == 6
    assert b"trial_id" in registry.read(version, "tune_results.csv")
    trial_spec = apply_overrides(spec, outcome.best_config)
    data = datasets.build(trial_spec.data, trial_spec.task)
    loaded = load_model(registry, version.ref)
    accuracy = evaluate(loaded.module, data.x_val, data.y_val, data.schema)["val_accuracy"]
    assert accuracy == pytest.approx(outcome.model.metrics["val_accuracy"], abs=1e-9)
    assert accuracy == pytest.approx(outcome.best_metric, abs=1e-9)

    # A stopped trial ends its Train run (within the one report in flight) and hands its
    # process to a later trial.
    histories = trial_histories(outcome.path)
    processes = {int(rows["pid"].iloc[0]) for rows in histories.values()}
    assert len(processes) < len(histories), processes
    storage = Path(outcome.path).parent.parent
    for stopped in outcome.trials[outcome.trials.status == "STOPPED"].itertuples():
        run = ray.train.Result.from_path(str(storage / f"{outcome.name}-{stopped.trial_id}"))
        assert run.metrics["epoch"] <= stopped.epochs + 2, (stopped, run.metrics["epoch"])

    # Ray Train's cleaner removes a stopped trial's placement group within a few seconds, and
    # no run's controller, trial process or report queue outlives the search.
    deadline = time.monotonic() + 30
    while (leaked := live_placement_groups() + live_search_actors(before)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert not leaked, leaked


def test_pbt_exploits_a_better_trial_from_its_weights_and_registers_the_chain(fresh_home, caplog):
    """4 digits-cnn trials, two with a learning rate too small to learn in 5 epochs. PBT
    copies a better trial's Train checkpoint into a worse one: the worse one's next epoch
    scores near its donor, not near its own last epoch, and the registered best names the
    chain of trials its weights came through. Synchronous, as a test must be: here a trial's
    5 epochs take 1.5 s after a 20 s start, so asynchronous trials whose starts differ by 2 s
    never report at the same time, and nothing is exploited (a run in CI)."""
    spec = load_spec(
        ROOT / "jobs/digits-cnn-tune.yaml",
        [
            "train.epochs=5",
            "model.params.channels=[16, 32]",
            "scaling.num_workers=1",
            "tune.max_concurrent_trials=4",  # the population runs at once (a CPU per 2)
            "tune.search=grid",
            "tune.num_samples=2",
            "tune.scheduler.name=pbt",
            "tune.scheduler.synchronous=true",
            "tune.scheduler.perturbation_interval=3",  # once: the next point is past the end
            "tune.scheduler.quantile_fraction=0.5",
            "tune.scheduler.resample_probability=0",
            'tune.space={"train.optimizer.lr": {"grid": [0.00002, 0.003]},'
            ' "train.optimizer.weight_decay": {"uniform": [0.0, 0.01]},'
            ' "model.params.hidden": {"randint": [32, 128]}}',
        ],
    )
    outcome = run_search(spec, quiet=True)
    histories = trial_histories(outcome.path)
    exploits = [
        (trial, rows.index[i])
        for trial, rows in histories.items()
        for i in range(1, len(rows))
        if rows["inherited_from"].iloc[i]
        and rows["lineage"].iloc[i] != rows["lineage"].iloc[i - 1]
        and not rows["inherited_from"].iloc[i - 1]
    ]
    print(f"\nPBT: {outcome.trials[['trial_id', 'epochs', 'best', 'lineage']].to_dict('records')}")
    assert exploits, {t: rows["lineage"].tolist() for t, rows in histories.items()}
    assert "no checkpoint for trial" not in caplog.text
    telling = 0  # exploits whose donor and own weights scored apart: whose were taken shows
    for trial, at in exploits:
        rows = histories[trial]
        after, own = rows.loc[at], rows.loc[rows.index[rows.index.get_loc(at) - 1]]
        donor_trial, donor_epoch = after["lineage"].split(" > ")[-2].split("@")
        donor = histories[donor_trial]
        donor_score = donor[donor["epoch"] == int(donor_epoch)]["val_accuracy"].iloc[-1]
        assert after["epoch"] == int(donor_epoch) + 1
        configs = outcome.trials.set_index("trial_id")["config/model.params.hidden"]
        assert configs[trial] == configs[donor_trial]  # the architecture came with the weights
        if abs(donor_score - own["val_accuracy"]) < NOISE:
            continue  # PBT also exploits between two good trials (their last epochs differ)
        telling += 1
        gap_to_donor = abs(after["val_accuracy"] - donor_score)
        assert gap_to_donor < abs(after["val_accuracy"] - own["val_accuracy"]), (after, own)
    assert telling, exploits

    assert outcome.model is not None
    registry = ModelRegistry.open()
    version = registry.resolve(f"{outcome.model.model}@{outcome.model.version}")
    chain = registry.read_json(version, "lineage.json")["search"]["inherited"]
    best_row = outcome.trials[outcome.trials.trial_id == outcome.best_trial].iloc[0]
    assert chain[-1] == {"trial": outcome.best_trial, "epoch": spec.train.epochs}
    assert " > ".join(f"{c['trial']}@{c['epoch']}" for c in chain) == best_row["lineage"]


def trial_histories(search_path: str) -> dict:
    """Every report of every trial (restarts included), by trial id, from Tune's files."""
    import pandas as pd

    frames = [pd.read_csv(p) for p in sorted(Path(search_path).glob("*/progress.csv"))]
    everything = pd.concat(frames).fillna({"inherited_from": "", "lineage": ""})
    return {t: rows.reset_index(drop=True) for t, rows in everything.groupby("trial_id")}


def live_placement_groups() -> list[dict]:
    return [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]


def live_search_actors(before: set[str] = frozenset()) -> list[str]:
    """Train controllers and workers and Tune trial processes alive now, other than
    the actors in `before` (ids)."""
    from ray.util.state import list_actors

    kinds = {"EventsController", "RayTrainWorker", "ImplicitFunc"}
    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
    return [
        f"{a.class_name} {a.actor_id}"
        for a in actors
        if a.class_name in kinds and a.actor_id not in before
    ]


def first_suggestions(seed: int) -> list[dict]:
    """The first two configurations Kiln's Optuna searcher suggests, as Tune asks for them
    (no trial runs: what a seed decides is what the searcher hands out)."""
    spec = load_spec(
        ROOT / "jobs/digits-cnn-tune.yaml",
        ["tune.search=optuna", "tune.scheduler.name=fifo", f"tune.seed={seed}"],
    )
    assert spec.tune is not None
    config = tune_config(spec)
    searcher = config.search_alg
    searcher.set_search_properties(config.metric, config.mode, param_space(spec.tune))
    return [searcher.suggest(f"trial-{i}") for i in range(2)]


def test_optuna_is_reproducible_with_a_seed():
    first, again = first_suggestions(seed=7), first_suggestions(seed=7)
    assert all(first) and first == again
    assert set(first[0]) == {
        "train.optimizer.lr",
        "model.params.dropout",
        "model.params.hidden",
        "train.batch_size",
    }
    assert first != first_suggestions(seed=8)


def small_search(name: str) -> tuple[list[str], dict[str, str]]:
    """`kiln tune` of 2 one-worker trials of 2 epochs, one at a time (command line, env)."""
    job = [
        *("--set", "tune.num_samples=2", "--set", "tune.max_concurrent_trials=1"),
        *("--set", "scaling.num_workers=1", "--set", "train.epochs=2"),
        *("--set", "tune.scheduler.name=fifo"),
        *("--name", name),
    ]
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "TUNE_GLOBAL_CHECKPOINT_S": "0",
    }
    tune = [sys.executable, "-m", "kiln", "tune", str(ROOT / "jobs/digits-cnn-tune.yaml")]
    return [*tune, "--quiet", *job], env


@pytest.mark.parametrize(
    "place, what", [("KILN_REGISTRY", "registry"), ("KILN_STORAGE", "run storage")]
)
def test_storage_that_cannot_be_written_is_refused_before_any_trial(fresh_home, place, what):
    command, env = small_search("unwritable")
    env[place] = "/dev/null/kiln"  # pyarrow's traceback, for run storage
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: cannot write to the {what} /dev/null/kiln"), done.stderr
    assert not (fresh_home / "runs" / "tune" / "unwritable").exists()


def test_interrupted_search_resumes_without_rerunning_finished_trials(fresh_home):
    command, env = small_search("resumable")
    driver = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    search = fresh_home / "runs" / "tune" / "resumable"

    def finished() -> dict[str, list[int]]:
        """Trials that reported their last epoch, with every epoch they reported."""
        done = {}
        for result in search.glob("*/result.json"):
            epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line]
            if epochs and epochs[-1] == 2:
                done[result.parent.name] = epochs
        return done

    deadline = time.monotonic() + 180
    while not finished() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    before = finished()
    driver.send_signal(signal.SIGKILL)  # the driver dies without a word
    driver.wait()
    assert before and driver.returncode != 0, "the search ended or stalled before a trial finished"
    time.sleep(1.0)

    resumed = subprocess.run(
        [*command, "--resume", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Configuration for experiment" not in resumed.stderr  # Tune's box: Kiln draws its own
    assert "tensorboard" not in resumed.stderr.lower()
    result = json.loads(resumed.stdout)
    assert result["trials"] == 2 and result["model"]["model"] == "digits-cnn"
    after = finished()
    for trial, epochs in before.items():
        assert after[trial] == epochs == [1, 2], f"{trial} trained epochs again: {after[trial]}"


@pytest.mark.parametrize(
    "space, message",
    [
        ("train.optimzer.lr: {uniform: [0.1, 0.2]}", "train.optimzer: unknown key"),
        (
            "train.batch_size: {choice: []}",
            "tune.space.train.batch_size.choice: List should have at least 1 item",
        ),
        ("model.params.dropout: {uniform: [0.5, 0.1]}", "low 0.5 > high 0.1"),
        (
            "train.optimizer.lr: {uniform: [-0.1, 0.1]}",
            "train.optimizer.lr: Input should be greater than 0",
        ),
        ("model.params.widht: {randint: [1, 4]}", "model.params.widht: unknown key"),
        (  # both ends are integers, but uniform draws fractions
            "train.batch_size: {uniform: [32, 256]}",
            "tune.space.train.batch_size: uniform draws fractions",
        ),
        (  # Optuna samples; it cannot enumerate a grid
            "train.batch_size: {grid: [32, 64]}\n  search: optuna",
            "search: optuna samples each trial's values and cannot enumerate a grid",
        ),
        (  # PBT picks the next values itself: Ray runs it without a searcher
            "train.optimizer.lr: {loguniform: [0.001, 0.01]}\n  search: optuna\n"
            "  scheduler: {name: pbt}",
            "scheduler: pbt chooses each trial's next values itself",
        ),
        (  # PBT with nothing it may mutate
            "train.batch_size: {grid: [32, 64]}\n  search: grid\n  scheduler: {name: pbt}",
            "scheduler: pbt needs a sampled train.* domain to mutate",
        ),
        (  # a model value would change the shapes the donor's weights have
            "model.params.hidden: {randint: [32, 64]}\n  scheduler: {name: pbt}",
            "scheduler: pbt needs a sampled train.* domain to mutate",
        ),
        (  # PB2 fits a Gaussian process over numeric bounds: a choice has none
            "train.batch_size: {choice: [32, 64]}\n  scheduler: {name: pb2}",
            "scheduler: pb2 needs a uniform, loguniform or randint train.* domain to mutate",
        ),
        (  # a grid search with nothing to enumerate
            "train.optimizer.lr: {loguniform: [0.001, 0.01]}\n  search: grid",
            "search: grid needs at least one grid domain",
        ),
    ],
)
def test_bad_spaces_fail_before_ray_in_one_line(tmp_path, space, message):
    path = tmp_path / "tune.yaml"
    path.write_text(f"extends: {ROOT / 'jobs/digits-cnn.yaml'}\ntune:\n  space:\n    {space}\n")
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "tune", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert message in lines[0], lines[0]


def test_trials_whose_network_does_not_fit_end_at_once_each_in_one_line(fresh_home, capfd):
    """A mistake (kiln.train.mistakes) ends each trial at its first failure, shown as one line
    of the search's view rather than Tune's traceback of it; the search ends with the
    mistake itself (exit code 2), not a list of errors."""
    from kiln.errors import SpecError

    spec = load_spec(
        ROOT / "jobs/digits-cnn-tune.yaml",
        [
            "model.family=null",
            "model.params={}",
            "model.import=tests.models.custom:sized_for_other_data",
            "tune.space={train.optimizer.lr: {choice: [0.001, 0.01]}}",
            "tune.num_samples=2",
            "register=null",
        ],
    )
    mistake = r"tests.models.custom:sized_for_other_data does not fit the data"
    tune_logs: list[logging.LogRecord] = []  # Ray's handler writes them to the terminal
    collect = logging.Handler()
    collect.emit = tune_logs.append  # type: ignore[method-assign]
    logging.getLogger("ray.tune").addHandler(collect)
    try:
        with pytest.raises(SpecError, match=rf"^no trial of digits-cnn-tune-.* ran: {mistake}"):
            run_search(spec)
    finally:
        logging.getLogger("ray.tune").removeHandler(collect)
    shown = " ".join(capfd.readouterr().out.split())  # rich wraps at 80 columns off a terminal
    failed = re.findall(rf"trial \w+ failed: kiln.errors.SpecError: {mistake}", shown)
    assert len(failed) == 2, shown
    assert [r.getMessage() for r in tune_logs if r.exc_info] == []  # no traceback


def test_a_grid_search_on_a_file_uri_runs_every_combination_once_registers_and_resumes(
    fresh_home, tmp_path
):
    """A 2 x 3 grid runs exactly its 6 combinations. Storage is a URI (`file://`, as s3:// or
    gs:// would be): pathlib would make a folder named `file:`; pyarrow.fs writes the results,
    Ray Train the runs, the registry the best, and --resume finds the search."""
    store = tmp_path / "store"
    space = (
        "    train.optimizer.lr: {grid: [0.001, 0.01]}\n"
        "    train.batch_size: {grid: [32, 64, 128]}\n"
    )
    spec = load_spec(grid_job(tmp_path, space, f"storage_path: file://{store}\n"))
    outcome = run_search(spec, quiet=True)
    trials = outcome.trials
    lrs, batches = trials["config/train.optimizer.lr"], trials["config/train.batch_size"]
    combinations = sorted(zip(lrs, batches, strict=True))
    assert combinations == sorted((lr, b) for lr in (0.001, 0.01) for b in (32, 64, 128))
    assert (trials["first_epoch_s"] > 0).all(), trials["first_epoch_s"]  # each trial's start

    folder = store / "tune" / outcome.name
    assert (folder / "results.csv").exists() and (folder / "curves.png").exists()
    assert not list(ROOT.glob("file:*")) and not list(tmp_path.glob("file:*"))
    registry = ModelRegistry.open()
    assert outcome.model is not None
    version = registry.resolve(f"{outcome.model.model}@{outcome.model.version}")
    assert registry.read_json(version, "lineage.json")["search"]["trials"] == 6

    resumed = run_search(spec, quiet=True, resume=True)  # the latest search, found by pyarrow
    assert resumed.name == outcome.name
    assert sorted(resumed.trials["trial_id"]) == sorted(outcome.trials["trial_id"])


def grid_job(folder, space: str, extra: str = ""):
    """A one-epoch digits-mlp grid search over `space` (indented YAML lines)."""
    path = folder / "grid.yaml"
    path.write_text(
        f"extends: {ROOT / 'jobs/digits-mlp.yaml'}\n{extra}"
        "train: {epochs: 1, early_stopping: null}\n"
        "scaling: {num_workers: 1}\n"
        "tune:\n  search: grid\n  scheduler: {name: fifo}\n  space:\n" + space
    )
    return path


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_ends_a_search_without_registering_and_says_how_to_resume(fresh_home, stop):
    """Tune ends a search early on Ctrl-C and hands back its trials as if they had finished:
    the best of them is not the search's best. SIGTERM (`kill`, `ray job stop`) does the
    same: it had ended the driver with no word, and a trial stopped before its first epoch
    was a warning naming a FileNotFoundError."""
    command, env = small_search("stopped")
    driver = start_in_foreground(command, env)
    search = fresh_home / "runs" / "tune" / "stopped"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(
        r.stat().st_size for r in search.glob("*/result.json")
    ):
        time.sleep(0.2)  # until a trial has reported an epoch
    driver.send_signal(stop)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "Tuner.restore" not in stderr
    assert "Failed to fetch metrics" not in stderr
    assert re.search(
        r"search stopped stopped with [12] trials? unfinished; nothing registered", stderr
    )
    assert "--resume --name stopped" in stderr
    assert not (fresh_home / "registry" / "digits-cnn").exists()
    # What --resume then does: test_interrupted_search_resumes_without_rerunning_finished_trials
