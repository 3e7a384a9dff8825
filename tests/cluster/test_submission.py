"""What `kiln submit` sends through the Jobs API (pure logic)."""

import shlex
from pathlib import Path

import pytest

from kiln.cluster.submission import build_submission
from kiln.errors import PreflightError
from kiln.validate import load_spec
from tests.conftest import ROOT


def submission(spec_file: Path, *overrides: str, command="train", **kwargs):
    spec = load_spec(spec_file, list(overrides))
    return build_submission(spec_file, spec, list(overrides), command, **kwargs)


def test_entrypoint_runs_kiln_on_the_spec_relative_to_the_working_dir(monkeypatch):
    monkeypatch.chdir(ROOT)
    job = submission(ROOT / "jobs" / "digits-mlp.yaml", "train.epochs=3")
    args = shlex.split(job.entrypoint)
    assert args[:5] == ["python", "-m", "kiln", "train", "jobs/digits-mlp.yaml"]
    assert args[5:7] == ["--set", "train.epochs=3"]
    assert args[7:] == ["--run-name", job.submission_id]
    assert job.submission_id.startswith("digits-mlp-")
    tune = submission(ROOT / "jobs" / "digits-cnn-tune.yaml", command="tune")
    assert shlex.split(tune.entrypoint)[3:6] == ["tune", "jobs/digits-cnn-tune.yaml", "--name"]


def test_runtime_env_metadata_and_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KILN_REGISTRY", "s3://bucket/registry")
    monkeypatch.setenv("KILN_API_KEYS", "secret")
    job = submission(ROOT / "jobs" / "digits-mlp.yaml", extra_env={"A": "1"})
    ray_args = job.to_ray()
    env = ray_args["runtime_env"]["env_vars"]
    assert env["KILN_REGISTRY"] == "s3://bucket/registry"
    assert env["KILN_STORAGE"] == str(tmp_path / "home" / "runs")
    assert env["A"] == "1"
    assert "KILN_API_KEYS" not in env and "KILN_HOME" not in env  # serving secrets stay here
    assert ray_args["runtime_env"]["working_dir"] == str(ROOT)
    assert {".git", ".venv", ".kiln"} <= set(ray_args["runtime_env"]["excludes"])
    meta = ray_args["metadata"]
    assert meta["kiln_job"] == "digits-mlp" and meta["spec"] == "jobs/digits-mlp.yaml"
    assert len(meta["git_commit"].removesuffix("+dirty")) == 40


def test_files_outside_the_working_dir_are_refused(monkeypatch, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "jobs" / "digits-cnn.yaml").read_text())
    child = tmp_path / "project" / "job.yaml"
    child.parent.mkdir()
    child.write_text("extends: ../base.yaml\nname: child\n")
    monkeypatch.chdir(child.parent)
    with pytest.raises(PreflightError, match="a file it extends .* lies outside"):
        submission(child)
    monkeypatch.chdir(ROOT)
    with pytest.raises(PreflightError, match="the job spec .* lies outside"):
        submission(child)
