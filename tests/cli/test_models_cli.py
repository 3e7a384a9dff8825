"""`kiln models list | show | promote | export` on a model trained in this session."""

import json

import numpy as np
import pytest
import torch

from kiln.cli import main
from tests.conftest import run_kiln

pytestmark = pytest.mark.usefixtures("ray_cluster")


def kiln_json(capsys, *args: str):
    main([*args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_list_show_and_promote(digits_cnn, capsys):
    _, outcome = digits_cnn
    listed = {m["name"]: m for m in kiln_json(capsys, "models", "list")}
    assert outcome.version in listed["digits-cnn"]["versions"]
    card = kiln_json(capsys, "models", "show", f"digits-cnn@{outcome.version}")
    assert card["metrics"]["val_accuracy"] == outcome.metrics["val_accuracy"]
    assert card["lineage"]["run_name"] == outcome.run_name
    kiln_json(
        capsys, "models", "promote", "digits-cnn", str(outcome.version), "--alias", "production"
    )
    assert (
        kiln_json(capsys, "models", "show", "digits-cnn@production")["version"] == outcome.version
    )


def test_unknown_model_is_one_line_and_exit_3(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "show", "no-such-model@production"])
    assert exit_info.value.code == 3
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_runs_like_the_original(digits_cnn, tmp_path, capsys, fmt):
    _, outcome = digits_cnn
    path = tmp_path / f"model.{fmt}"
    result = kiln_json(
        capsys,
        "models",
        "export",
        f"digits-cnn@{outcome.version}",
        "--format",
        fmt,
        "-o",
        str(path),
    )
    assert result["bytes"] == path.stat().st_size > 0
    from kiln.registry import ModelRegistry
    from kiln.registry.loading import load_model

    original = load_model(ModelRegistry.open(), f"digits-cnn@{outcome.version}").module
    x = torch.rand(5, 1, 8, 8)  # another batch size than the export's example
    with torch.no_grad():
        expected = original(x).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(path))(x).detach().numpy()
    else:
        import onnx
        from onnx.reference import ReferenceEvaluator

        onnx.checker.check_model(onnx.load(str(path)))
        got = ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_export_prints_one_line(digits_cnn, tmp_path):
    """The exporter's notes to torch's developers (torchvision's operators skipped, deprecations
    inside torch) stay out of a user's terminal."""
    _, outcome = digits_cnn
    path = tmp_path / "model.onnx"
    done = run_kiln(
        "models", "export", f"digits-cnn@{outcome.version}", "--format", "onnx", "-o", str(path)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote ") and path.stat().st_size > 0
    assert done.stderr == ""


def test_delete_versions_from_the_terminal(tmp_path, monkeypatch, capsys):
    from kiln.registry import ModelRegistry

    monkeypatch.setenv("KILN_REGISTRY", str(tmp_path / "registry"))
    registry = ModelRegistry.open()
    for alias in ("production", None, None):
        registry.register("m", {"model.json": b"{}"}, alias=alias)
    assert kiln_json(capsys, "models", "delete", "m@2", "m@3") == [
        {"name": "m", "version": 2, "aliases_deleted": []},
        {"name": "m", "version": 3, "aliases_deleted": []},
    ]
    for args, code, message in [
        (["m@1"], 1, "m@1 is @production: point production at another version first"),
        (["m@production"], 2, "name the version to delete by its number"),
        (["m@7"], 3, "m has no version 7 to delete"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["models", "delete", *args])
        assert exit_info.value.code == code
        assert message in capsys.readouterr().err
    main(["models", "delete", "m@1", "--with-aliases"])
    assert capsys.readouterr().out.strip() == "deleted m@1 and @production"
    assert kiln_json(capsys, "models", "list") == []  # no versions left: not listed
