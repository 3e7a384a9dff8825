"""`kiln validate FILE...` and `kiln schema job`."""

import json
from pathlib import Path

import typer

from kiln.cli.output import console
from kiln.errors import SpecError


def validate(
    files: list[Path] = typer.Argument(..., help="job specs to check"),
    set_: list[str] = typer.Option([], "--set", help="override a field: PATH=VALUE"),
) -> None:
    """Check job specs without starting Ray; one line per broken file, exit code 2."""
    from kiln.validate import load_spec

    broken = []
    for path in files:
        try:
            spec = load_spec(path, set_)
            console.print(
                f"[green]ok[/green] {path} ({spec.name}: {spec.task}, "
                f"{spec.model.family or spec.model.import_path} on {spec.data.name})"
            )
        except SpecError as e:
            broken.append(str(e))
    if broken:
        raise SpecError("\n".join(broken))


def schema(kind: str = typer.Argument("job", help="only 'job' for now")) -> None:
    """Print the JSON Schema of job specs (for editors: yaml-language-server)."""
    if kind != "job":
        raise SpecError(f"unknown schema {kind!r}; known: job")
    from kiln.spec import JobSpec

    print(json.dumps(JobSpec.model_json_schema(by_alias=True), indent=2))
