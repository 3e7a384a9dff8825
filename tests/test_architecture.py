"""Kiln's architecture, as `[tool.importlinter]` in pyproject.toml states it: layers without
upward imports, no cycles, the serving split, lean replicas, one home per task."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import tasks
from kiln.builders import import_object
from tests.conftest import ROOT

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the package under `root`/platform, with `root`'s contracts."""
    return subprocess.run(
        [LINT_IMPORTS, str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root / "platform"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def copy_of_kiln(tmp_path) -> Path:
    shutil.copytree(ROOT / "platform" / "kiln", tmp_path / "platform" / "kiln")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        # a task reaching up into the training loops it names
        ("tasks/classification_extra.py", "from kiln.train import runner", "kiln's layers"),
        # an upward import hidden in a function (lazy imports count)
        ("metrics/late.py", "def f():\n    from kiln.registry import store", "kiln's layers"),
        # the control plane importing replica code (torch)
        (
            "serve/control/peek.py",
            "from kiln.serve.replica import predictor",
            "replicas and the control plane",
        ),
        # a replica reaching the dataset builders (pandas, scikit-learn)
        ("serve/replica/peek.py", "import kiln.data", "a replica loads"),
    ],
)
def test_an_upward_import_breaks_the_contract(copy_of_kiln, module, line, broken):
    (copy_of_kiln / "platform" / "kiln" / module).write_text(line + "\n")
    done = lint_imports(copy_of_kiln)
    assert done.returncode != 0
    assert f"{broken}" in done.stdout.split("Broken contracts")[-1], done.stdout[-2000:]


def test_a_module_outside_the_layers_breaks_the_contract(copy_of_kiln):
    """Every top-level module must be placed in a layer (the contract is exhaustive)."""
    (copy_of_kiln / "platform" / "kiln" / "stray.py").write_text("X = 1\n")
    done = lint_imports(copy_of_kiln)
    assert done.returncode != 0
    assert "kiln.stray" in done.stdout + done.stderr


def test_a_cycle_breaks_the_contract(copy_of_kiln):
    (copy_of_kiln / "platform" / "kiln" / "cluster" / "dashboard.py").open("a").write(
        "\n\ndef _late():\n    from kiln.cluster import local  # noqa: F401\n"
    )
    done = lint_imports(copy_of_kiln)
    assert done.returncode != 0
    assert "no import cycles" in done.stdout


@pytest.mark.parametrize("name", tasks.names())
def test_each_task_names_a_loop_and_a_predictor_in_their_layers(name):
    task = tasks.get(name)
    assert task.loop.startswith("kiln.train.loops.")
    assert callable(import_object(f"{task.loop}:train_loop_per_worker"))
    assert task.predictor.startswith("kiln.serve.replica.")
    from kiln.serve.replica.predictor import Predictor

    assert issubclass(import_object(task.predictor), Predictor)
    assert task.objective[0] in task.metrics
