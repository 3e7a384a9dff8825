"""`kiln models list | show | promote | delete | export`: the model registry from the terminal."""

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from kiln.cli.output import commands, console, number, print_json

app = commands("Registered models: versions, aliases, cards, export, deletion.")

JSON = typer.Option(False, "--json", help="JSON on stdout")


@app.command("list")
def list_models(json_output: bool = JSON) -> None:
    """Every model with its versions and aliases."""
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open()
    rows: list[dict[str, Any]] = [
        {"name": n, "versions": versions, "aliases": registry.aliases(n)}
        for n in registry.models()
        if (versions := registry.versions(n))  # not one whose every version was deleted
    ]
    if json_output:
        print_json(rows)
        return
    table = Table("model", "versions", "aliases", title=f"registry {registry.uri}")
    for row in rows:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(row["aliases"].items()))
        table.add_row(row["name"], ", ".join(map(str, row["versions"])), aliases)
    console.print(table)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS"),
    json_output: bool = JSON,
) -> None:
    """The model card of one version: model, data, metrics, lineage, files."""
    from kiln import preprocess
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open()
    version = registry.resolve(ref)
    card = registry.read_json(version, "model.json")
    metrics = registry.read_json(version, "metrics.json")
    lineage = registry.read_json(version, "lineage.json")
    aliases = sorted(a for a, v in registry.aliases(version.name).items() if v == version.version)
    if json_output:
        print_json(
            {
                "name": version.name,
                "version": version.version,
                "aliases": aliases,
                "path": f"{registry.uri}/{version.name}/{version.version}",
                "card": card,
                "metrics": metrics["best"],
                "baselines": metrics["baselines"],
                "lineage": lineage,
                "files": version.manifest["files"],
            }
        )
        return
    model = card["model"].get("family") or card["model"].get("import")
    table = Table(show_header=False, title=f"{version.ref}  {' '.join('@' + a for a in aliases)}")
    table.add_row("task", card["task"])
    table.add_row("model", f"{model} {card['model']['params'] or ''}")
    table.add_row("input", f"{card['inputs'][0]['datatype']} {card['inputs'][0]['shape']}")
    if columns := preprocess.input_columns(card["schema"].get("transform") or {}):
        table.add_row("features", ", ".join(columns))
    table.add_row("output", f"{card['outputs'][0]['datatype']} {card['outputs'][0]['shape']}")
    for key, value in sorted(metrics["best"].items()):
        if key.startswith("val_") or key == "epoch":
            table.add_row(key, number(value))
    for key, value in sorted(metrics["baselines"].items()):
        table.add_row(f"{key} (baseline)", number(value))
    table.add_row(
        "git", f"{lineage['git_commit'] or '-'}{' (dirty)' if lineage['git_dirty'] else ''}"
    )
    table.add_row("spec sha256", lineage["spec_sha256"][:16])
    table.add_row("data", lineage["data_fingerprint"][:16])
    table.add_row("run", lineage["run_path"])
    table.add_row("ray / torch", f"{lineage['ray_version']} / {lineage['torch_version']}")
    table.add_row("created", lineage["created_at"])
    table.add_row("files", ", ".join(sorted(version.manifest["files"])))
    console.print(table)


@app.command()
def promote(
    name: str,
    version: int,
    alias: str = typer.Option(..., "--alias", help="e.g. production"),
    json_output: bool = JSON,
) -> None:
    """Point an alias at a version (atomically)."""
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open()
    registry.promote(name, version, alias)
    if json_output:
        print_json({"name": name, "version": version, "alias": alias})
    else:
        console.print(f"{name}@{alias} → version {version}")


@app.command()
def delete(
    refs: list[str] = typer.Argument(..., help="NAME@VERSION, one or more"),
    with_aliases: bool = typer.Option(
        False, "--with-aliases", help="also delete the aliases that point at them"
    ),
    json_output: bool = JSON,
) -> None:
    """Delete versions (their numbers are never reused); refused while an alias points at one."""
    from kiln.errors import SpecError
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open()
    versions = []
    for ref in refs:
        name, _, tag = ref.partition("@")
        if not tag.isdigit():
            raise SpecError(f"{ref}: name the version to delete by its number (NAME@VERSION)")
        versions.append((name, int(tag)))
    deleted = []
    for name, version in versions:
        aliases = registry.delete(name, version, with_aliases)
        deleted.append({"name": name, "version": version, "aliases_deleted": aliases})
        if not json_output:
            also = f" and {', '.join('@' + a for a in aliases)}" if aliases else ""
            console.print(f"deleted {name}@{version}{also}")
    if json_output:
        print_json(deleted)


@app.command()
def export(
    ref: str,
    format: str = typer.Option(..., "--format", help="onnx or torchscript"),
    output: Path = typer.Option(..., "-o", "--output", help="file to write"),
    json_output: bool = JSON,
) -> None:
    """Export a registered model for runtimes outside Kiln."""
    from kiln.registry import ModelRegistry
    from kiln.registry.export import export_model
    from kiln.registry.loading import load_model

    loaded = load_model(ModelRegistry.open(), ref)
    size = export_model(loaded, format, output)
    if json_output:
        print_json(
            {"model": loaded.version.ref, "format": format, "path": str(output), "bytes": size}
        )
    else:
        console.print(f"wrote {output} ({format}, {size:,} bytes) from {loaded.version.ref}")
