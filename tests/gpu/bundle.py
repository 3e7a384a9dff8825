"""Kiln's dependencies for the GPU machine, in one archive small enough to carry there.

    python tests/gpu/bundle.py                  # .gpu/site-py3.12.tar.xz, made once
    python tests/gpu/bundle.py --python 3.11    # the same for this machine, to try it here

The GPU machine cannot download, and a device call carries at most 64 MiB; Ray's wheel alone
is 79 MB. Its image has Python 3.12 with torch, numpy, pandas, pyarrow, scikit-learn and much
else, but not Ray, pydantic, FastAPI or Redis. So: pip resolves Kiln's runtime dependencies
for that Python (binary wheels, this repository's pins), installs them into a folder, drops
what the image holds already and what a training or serving run never loads (Ray's Java jars,
RLlib, its LLM library, the dashboard's web client, Optuna, faiss), strips the debug symbols
from Ray's binaries and compresses the rest with xz. `run_on_gpu.sh` unpacks it there onto
PYTHONPATH, ahead of the image's packages.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import tomllib
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".gpu"
LIMIT = 64 * 2**20  # what one device call carries, the repository included

# In the GPU machine's image (/work/.library/device/KINDS.md); torch's build is the image's own.
# fmt: off
IMAGE_HAS = {
    "absl-py", "accelerate", "aiofiles", "aiohappyeyeballs", "aiohttp", "aiosignal",
    "annotated-doc", "anyio", "attrs", "certifi", "charset-normalizer", "click", "cloudpickle",
    "colorama", "contourpy", "cycler", "filelock", "fonttools", "frozenlist", "fsspec", "h11",
    "httpcore", "httpx", "idna", "jinja2", "joblib", "kiwisolver", "markdown-it-py",
    "markupsafe", "matplotlib", "mdurl", "msgpack", "multidict", "narwhals", "networkx",
    "numpy", "packaging", "pandas", "patsy", "pillow", "pip", "prometheus-client", "propcache",
    "psutil", "pyarrow", "pygments", "pyparsing", "python-dateutil", "pytz", "pyyaml",
    "requests", "rich", "safetensors", "scikit-learn", "scipy", "setuptools", "shellingham",
    "six", "statsmodels", "sympy", "threadpoolctl", "torch", "tqdm", "triton", "typer",
    "typing-extensions", "urllib3", "uvloop", "wrapt", "yarl", "zipp",
}
# fmt: on
# Kept from the bundle although the image has them: Kiln's gRPC stubs need these versions.
PINNED_HERE = {"grpcio", "protobuf"}
# Never loaded by a training or serving run there (Optuna search and faiss retrieval are lazy).
# fmt: off
NOT_NEEDED = {
    "faiss-cpu", "optuna", "sqlalchemy", "alembic", "mako", "colorlog", "greenlet", "py-spy",
    "virtualenv", "distlib", "platformdirs", "tzdata",
}
# fmt: on
RAY_UNUSED = ["jars", "rllib", "llm", "tests", "serve/tests", "data/tests"]
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (3.12)")
    parser.add_argument("--force", action="store_true", help="make it again")
    args = parser.parse_args()
    archive = OUT / f"site-py{args.python}.tar.xz"
    if archive.exists() and not args.force:
        print(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB (made before)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        install(site, args.python)
        dropped = drop(site, IMAGE_HAS, keep=PINNED_HERE) + drop(site, NOT_NEEDED)
        slim_ray(site / "ray")
        OUT.mkdir(exist_ok=True)
        with tarfile.open(archive, "w:xz", preset=9) as tar:
            tar.add(site, arcname="site")
    size = archive.stat().st_size
    print(f"{archive}: {size / 2**20:.1f} MiB")
    print(f"left out (the image has them, or no run loads them): {', '.join(sorted(dropped))}")
    if size > LIMIT - 8 * 2**20:
        sys.exit(f"{archive} leaves under 8 MiB of the {LIMIT // 2**20} MiB for the repository")


def requirements() -> list[str]:
    """Kiln's runtime dependencies but torch (the image's build), from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [r for r in project["dependencies"] if not re.match(r"torch\b", r)]


def install(site: Path, python: str) -> None:
    constraints = Path(site.parent) / "constraints.txt"
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    constraints.write_text("\n".join(p for p in pins if not re.match(r"(torch|nvidia|triton)", p)))
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-warn-conflicts",
         "--target", str(site),
         "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
         *platforms, "-c", str(constraints), *requirements()],
        check=True,
    )  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: Kiln runs `python -m`


def drop(site: Path, names: set[str], keep: set[str] = frozenset()) -> list[str]:
    """Removes the named distributions' files (from their RECORD); the names it removed."""
    wanted = {canonicalize_name(n) for n in names} - {canonicalize_name(n) for n in keep}
    removed = []
    for info in site.glob("*.dist-info"):
        name = canonicalize_name(info.name.split("-")[0])
        if name not in wanted:
            continue
        for line in (info / "RECORD").read_text().splitlines():
            path = site / line.split(",")[0]
            if path.is_file() and site in path.resolve().parents:
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
        removed.append(name)
    for folder in sorted(site.rglob("*"), key=lambda p: -len(p.parts)):  # emptied folders
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def slim_ray(ray: Path) -> None:
    for part in RAY_UNUSED:
        shutil.rmtree(ray / part, ignore_errors=True)
    # The dashboard's web client (9 MB) goes; its head still wants the folders it serves.
    client = ray / "dashboard" / "client"
    shutil.rmtree(client)
    (client / "build" / "static").mkdir(parents=True)
    (client / "build" / "index.html").write_text("Left out of Kiln's GPU bundle; the API runs.\n")
    binaries = [ray / "_raylet.so", *(p for p in (ray / "core").rglob("*") if _is_elf(p))]
    subprocess.run(["strip", "--strip-unneeded", *map(str, binaries)], check=True)


def _is_elf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


if __name__ == "__main__":
    main()
