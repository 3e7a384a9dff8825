"""The model registry's lookups as a model's versions grow (10, 100, 1,000): what every
serving replica does each watch interval (resolve its alias) and each metadata call (list the
versions), beside the floor, one plain pyarrow read of the version's manifest. Reports each
lookup's mean time on local disk, its ratio to the floor, and the filesystem calls it makes
(on an object store, a call is a request; a listing, one per 1,000 keys). Figures go to
bench-results/registry.json."""

import json
import tempfile
import timeit
from pathlib import Path

import pyarrow.fs as pafs
from rich.console import Console
from rich.table import Table

from kiln.registry import WEIGHTS, ModelRegistry
from kiln.registry.store import MANIFEST
from tests.registry.counting import CountingHandler

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "registry.json"
SIZES = (10, 100, 1000)
REPEATS = 50


def lookups(registry: ModelRegistry, versions: int) -> dict:
    manifest = f"{registry.root}/m/{versions // 2}/{MANIFEST}"
    return {
        "plain read of one manifest": lambda: json.loads(
            registry.fs.open_input_stream(manifest).readall()
        ),
        "resolve m@production": lambda: registry.resolve("m@production"),
        "resolve m@<version>": lambda: registry.resolve(f"m@{versions // 2}"),
        "resolve m (latest)": lambda: registry.resolve("m"),
        "versions m": lambda: registry.versions("m"),
    }


def measure(versions: int) -> dict:
    registry = ModelRegistry(tempfile.mkdtemp(prefix="kiln-bench-registry-"))
    for i in range(1, versions + 1):
        alias = "production" if i == versions // 2 else None
        registry.register("m", {WEIGHTS: b"w" * 1024, "model.json": b"{}"}, alias=alias)
    figures = {}
    for name, call in lookups(registry, versions).items():
        figures[name] = {"ms": timeit.timeit(call, number=REPEATS) / REPEATS * 1000}
    counting = CountingHandler()
    registry.fs = pafs.PyFileSystem(counting)
    for name, call in lookups(registry, versions).items():
        counting.calls.clear()
        call()
        figures[name]["calls"] = sum(counting.calls.values())
    floor = figures["plain read of one manifest"]["ms"]
    for row in figures.values():
        row["x_floor"] = row["ms"] / floor
    return figures


def main() -> None:
    results = {str(n): measure(n) for n in SIZES}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    table = Table("versions", "lookup", "mean ms", "× plain read", "fs calls", title=str(OUT))
    for versions, figures in results.items():
        for name, row in figures.items():
            table.add_row(
                versions, name, f"{row['ms']:.3f}", f"{row['x_floor']:.1f}", str(row["calls"])
            )
    Console().print(table)


if __name__ == "__main__":
    main()
