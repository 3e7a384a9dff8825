"""The repo root must not shadow the standard library: `platform/` is a source folder only."""

import importlib.util
import subprocess
import sys
import sysconfig

from tests.conftest import ROOT


def test_no_platform_package():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_standard_platform_module_wins_from_repo_root():
    # `python -c` puts the current directory first on sys.path: the worst case.
    code = "import platform, uuid; print(platform.__file__); print(platform.system())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    path = out.stdout.splitlines()[0]
    assert path.startswith(sysconfig.get_paths()["stdlib"]), path


def test_pytest_sees_the_standard_platform_module():
    import platform

    assert platform.__file__.startswith(sysconfig.get_paths()["stdlib"])


def test_only_tests_is_importable_at_root():
    importable = sorted(
        p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.is_file()) or (p.is_dir() and (p / "__init__.py").exists())
    )
    assert importable == ["tests"]


def test_kiln_comes_from_the_source_folder():
    spec = importlib.util.find_spec("kiln")
    assert spec is not None and spec.origin is not None
    assert spec.origin.startswith(str(ROOT / "platform" / "kiln"))
