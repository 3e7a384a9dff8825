"""The `kiln` command. Each sub-command lives in its own module; this one composes them and
turns every `KilnError` into one line on stderr and its exit code (never a traceback).

    kiln train jobs/digits-cnn.yaml
    kiln validate jobs/*.yaml
    kiln models show digits-cnn@staging
"""

import os
import sys

import typer
from rich.markup import escape

from kiln.cli import (
    bench,
    cluster,
    features,
    jobs,
    k8s,
    models,
    rollout,
    serve,
    specs,
    train,
    tune,
)
from kiln.cli.output import commands, err_console
from kiln.errors import KilnError

app = commands(
    "Train, tune and serve deep-learning models on Ray.",
    name="kiln",
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("train")(train.train)
app.command("tune")(tune.tune)
app.command("validate")(specs.validate)
app.command("bench")(bench.bench)
app.command("schema")(specs.schema)
app.command("submit")(jobs.submit)
app.command("up")(cluster.up)
app.command("down")(cluster.down)
app.add_typer(models.app, name="models")
app.add_typer(serve.app, name="serve")
app.add_typer(rollout.app, name="rollout")
app.add_typer(features.app, name="features")
app.add_typer(jobs.app, name="jobs")
app.add_typer(k8s.app, name="k8s")

err = err_console


def main(argv: list[str] | None = None) -> None:
    # A spec's `model.import` finds a module in the current directory, as `python -m` would:
    # Ray's workers on this machine start there too, and find it the same way.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        # a command's typer.Exit(code) lands here
        code = app(args=argv, prog_name="kiln", standalone_mode=False)
    except KilnError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click's usage errors: the usage line and the error, or the help
        show = getattr(e, "show", None)
        if not isinstance(e, usage_errors()) or show is None:
            raise
        show()
        sys.exit(getattr(e, "exit_code", 2))
    if isinstance(code, int) and code:
        sys.exit(code)


def usage_errors() -> tuple[type[Exception], ...]:
    """What the command line's parser raises: typer 0.29 parses with its own copy of click
    (`typer._click`, whose exceptions derive from TyperException), earlier typers with click."""
    import click

    return (getattr(typer.exceptions, "TyperException", click.ClickException), click.ClickException)
