"""`kiln validate FILE...` and `kiln schema job`."""

import json
from pathlib import Path

import typer

from kiln.cli.output import console, print_json
from kiln.errors import KilnError, SpecError


def validate(
    files: list[Path] = typer.Argument(..., help="job specs and serving configs to check"),
    set_: list[str] = typer.Option([], "--set", help="override a job spec's field: PATH=VALUE"),
    json_output: bool = typer.Option(
        False, "--json", help="one JSON object per file on stdout: file, ok, what or error"
    ),
) -> None:
    """Check job specs and serving configs without starting Ray; one line per broken file, exit
    code 2. A serving config's models must be in its registry."""
    results = []
    for path in files:
        try:
            results.append({"file": str(path), "ok": True, "what": _checked(path, set_)})
        except KilnError as e:
            results.append({"file": str(path), "ok": False, "error": str(e)})
        if not json_output and results[-1]["ok"]:
            console.print(f"[green]ok[/green] {path} ({results[-1]['what']})")
    broken = [str(r["error"]) for r in results if not r["ok"]]
    if json_output:
        print_json(results)
        if broken:
            raise typer.Exit(SpecError.exit_code)
    elif broken:
        raise SpecError("\n".join(broken))


def _checked(path: Path, overrides: list[str]) -> str:
    """What the file is, once checked: a Ray Serve config has `applications`."""
    from kiln.spec import read_yaml

    raw = read_yaml(path, str(path))
    if isinstance(raw, dict) and "applications" in raw:
        from kiln.serve.control.deploy import load_config

        if overrides:
            raise SpecError(f"{path}: --set applies to job specs, not serving configs")
        names = [app["name"] for app in load_config(path)["applications"]]
        return f"serving config: {', '.join(names)}"
    from kiln.validate import load_spec

    spec = load_spec(path, overrides)
    model = spec.model.family or spec.model.import_path
    return f"{spec.name}: {spec.task}, {model} on {spec.data.name}"


def schema(kind: str = typer.Argument("job", help="only 'job' for now")) -> None:
    """Print the JSON Schema of job specs (for editors: yaml-language-server)."""
    if kind != "job":
        raise SpecError(f"unknown schema {kind!r}; known: job")
    from kiln.spec import JobSpec

    print(json.dumps(JobSpec.model_json_schema(by_alias=True), indent=2))
