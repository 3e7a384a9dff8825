"""Job specs: every shipped spec validates without torch imported; each broken spec gives one
line and exit code 2, without Ray or torch ever being imported."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiln.errors import SpecError
from kiln.spec import deep_merge
from kiln.validate import load_spec
from tests.conftest import ROOT, run_kiln

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))

GOOD = """
name: good
task: classification
data: {name: digits}
model: {family: mlp}
train: {epochs: 1}
"""

# name -> (YAML, --set overrides, what the one-line error must say)
BROKEN = {
    "unknown_key": (GOOD + "trian: {epochs: 2}\n", [], "trian: unknown key; expected one of:"),
    "unknown_nested_key": (
        GOOD.replace("epochs: 1", "epochs: 1, bacth_size: 8"),
        [],
        "train.bacth_size: unknown key",
    ),
    "wrong_type": (
        GOOD.replace("epochs: 1", "epochs: many"),
        [],
        "train.epochs: Input should be a valid integer",
    ),
    "negative_lr": (
        GOOD + "",
        ["train.optimizer.lr=-0.1"],
        "train.optimizer.lr: Input should be greater than 0",
    ),
    "unknown_csv_encoding": (
        GOOD.replace(
            "{name: digits}",
            "{name: table, path: t.csv, params: {label: y, csv: {encoding: latin-9000}}}",
        ),
        [],
        "data.params.csv.encoding: unknown encoding 'latin-9000' (utf8, latin-1, cp1252, ...)",
    ),
    "unknown_model": (
        GOOD.replace("family: mlp", "family: resnet9000"),
        [],
        "model.family: unknown model family 'resnet9000'; known: cnn, gan,",
    ),
    "unknown_model_param": (
        GOOD.replace("{family: mlp}", "{family: mlp, params: {width: 3}}"),
        [],
        "model.params.width: unknown key",
    ),
    "bad_model_param": (
        GOOD.replace("{family: mlp}", "{family: mlp, params: {dropout: 2}}"),
        [],
        "model.params.dropout: Input should be less than 1",
    ),
    "unknown_dataset": (
        GOOD.replace("name: digits", "name: imagenet"),
        [],
        "data.name: unknown dataset 'imagenet'",
    ),
    "missing_data_file": (
        GOOD.replace("{name: digits}", "{name: text_csv, path: no/such.csv}"),
        [],
        "data.path: file not found: no/such.csv",
    ),
    "file_for_a_bundled_dataset": (
        GOOD.replace("{name: digits}", "{name: digits, path: x.csv}"),
        [],
        "data.path: dataset digits does not read files",
    ),
    "path_in_params": (
        GOOD.replace("{name: digits}", "{name: text_csv, params: {path: x.csv}}"),
        [],
        "data.params.path: unknown key",
    ),
    "file_missing_for_a_file_dataset": (
        GOOD.replace("{name: digits}", "{name: table, params: {label: y}}"),
        [],
        "data.path: dataset table reads a file: give data.path",
    ),
    "bad_extends": ("extends: missing-base.yaml\nname: x\n", [], "extends: file not found"),
    "extends_cycle": ("extends: broken.yaml\n" + GOOD, [], "extends itself"),
    "missing_field": (
        "name: x\ntask: classification\nmodel: {family: mlp}\n",
        [],
        "data: required field is missing",
    ),
    "bad_task": (
        GOOD.replace("task: classification", "task: clustering"),
        [],
        "task: Input should be",
    ),
    "metric_of_other_task": (
        GOOD + "checkpoint: {metric: val_mae}\n",
        [],
        "is not a classification metric",
    ),
    "elastic_min_above_max": (GOOD + "scaling: {num_workers: [4, 2]}\n", [], "min <= max"),
    "both_family_and_import": (
        GOOD.replace("{family: mlp}", "{family: mlp, import: 'a.b:c'}"),
        [],
        "exactly one of 'family' or 'import'",
    ),
    "bad_yaml": (GOOD + "train: [unclosed\n", [], "line "),
    "not_a_mapping": ("- just\n- a list\n", [], "a job spec is a YAML mapping"),
    "bad_override": (GOOD, ["train.epochs"], "expected PATH=VALUE"),
}


@pytest.mark.parametrize("job", JOBS, ids=[j.name for j in JOBS])
def test_shipped_job_validates(job):
    spec = load_spec(job)
    assert spec.registration is None or spec.model_name


def test_checking_every_shipped_job_imports_no_torch():
    """A spec is checked against the families' signatures (kiln.models.families), not their
    networks: torch (1.1 s) is imported where a model is built, and a CLI that starts Ray
    imports it while Ray starts."""
    check = "import sys; from kiln.validate import load_spec; "
    check += "[load_spec(p) for p in sys.argv[1:]]; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", check, *map(str, JOBS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_validate_command_accepts_all_jobs():
    done = run_kiln("validate", *[str(j) for j in JOBS])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok ") == len(JOBS)


def test_validate_for_scripts_is_one_json_list_and_the_same_exit_code(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\n")
    done = run_kiln("validate", str(JOBS[0]), str(broken), "--json")
    assert done.returncode == 2 and done.stderr == ""
    first, second = json.loads(done.stdout)
    assert first["ok"] is True and first["file"] == str(JOBS[0])
    assert second["ok"] is False and "task: required field is missing" in second["error"]


def test_broken_specs_fail_in_one_line_without_ray(tmp_path):
    files = {}
    for name, (text, overrides, _) in BROKEN.items():
        path = tmp_path / "broken.yaml" if name == "extends_cycle" else tmp_path / f"{name}.yaml"
        path.write_text(text)
        files[name] = (str(path), overrides)
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from kiln.cli import main
        results = {}
        for name, (path, overrides) in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            args = ["train", path] + [a for o in overrides for a in ("--set", o)]
            with contextlib.redirect_stderr(err):
                try:
                    main(args)
                    code = 0
                except SystemExit as e:
                    code = e.code
            results[name] = [code, err.getvalue()]
        results["__ray_imported__"] = "ray" in sys.modules
        results["__torch_imported__"] = "torch" in sys.modules
        print(json.dumps(results))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results.pop("__ray_imported__") is False
    assert results.pop("__torch_imported__") is False
    for name, (code, stderr) in results.items():
        expected = BROKEN[name][2]
        lines = stderr.strip().splitlines()
        assert code == 2, (name, stderr)
        assert len(lines) == 1, (name, stderr)
        assert lines[0].startswith("error: "), (name, stderr)
        assert expected in lines[0], (name, lines[0])
        assert "Traceback" not in stderr


def test_extends_merges_and_overrides_win(tmp_path):
    (tmp_path / "base.yaml").write_text(GOOD + "train: {epochs: 5, batch_size: 16}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ntrain: {epochs: 7}\n")
    spec = load_spec(
        tmp_path / "child.yaml", ["train.optimizer.lr=0.01", "model.params.hidden=[32]"]
    )
    assert (spec.name, spec.train.epochs, spec.train.batch_size) == ("child", 7, 16)
    assert spec.train.optimizer.lr == 0.01
    assert spec.model.params == {"hidden": [32]}


def test_an_override_starts_a_section_that_is_null(tmp_path):
    """`register: null` in the file, a name given for one run; a value is still no section."""
    (tmp_path / "job.yaml").write_text(GOOD + "register: null\n")
    spec = load_spec(tmp_path / "job.yaml", ["register.name=mine", "register.alias=prod"])
    assert spec.registration is not None
    assert (spec.registration.name, spec.registration.alias) == ("mine", "prod")
    with pytest.raises(SpecError, match="train.epochs.max: train.epochs is a value, not a section"):
        load_spec(tmp_path / "job.yaml", ["train.epochs.max=3"])


def test_extends_replaces_a_model_of_another_family():
    merged = deep_merge(
        {"model": {"family": "cnn", "params": {"channels": [8]}}},
        {"model": {"family": "mlp", "params": {"hidden": [8]}}},
    )
    assert merged["model"] == {"family": "mlp", "params": {"hidden": [8]}}


def test_defaults_follow_the_task(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(
        GOOD.replace("classification", "forecasting")
        .replace("{name: digits}", "{name: co2}")
        .replace("{family: mlp}", "{family: rnn}")
        + "train: {early_stopping: {patience: 2}}\n"
    )
    spec = load_spec(path)
    assert (spec.checkpoint.metric, spec.checkpoint.mode) == ("val_mae", "min")
    assert spec.train.early_stopping.metric == "val_mae"


def test_spec_digest_is_stable_and_sensitive(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(GOOD)
    assert load_spec(path).digest() == load_spec(path).digest()
    assert load_spec(path).digest() != load_spec(path, ["train.epochs=2"]).digest()


def test_schema_command_prints_json_schema():
    done = run_kiln("schema", "job")
    schema = json.loads(done.stdout)
    assert "train" in schema["properties"] and "register" in schema["properties"]


def test_spec_error_is_a_kiln_error():
    with pytest.raises(SpecError):
        load_spec(Path("/no/such/spec.yaml"))
