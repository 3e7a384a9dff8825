"""Shared output helpers: JSON for scripts, rich for people."""

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def commands(help: str, **options: Any) -> typer.Typer:
    """A group of commands. Help is Markdown: a docstring's paragraphs are wrapped to the
    terminal (Typer's default keeps each line break, and the command lists come out ragged),
    and `code` is set off."""
    options.setdefault("no_args_is_help", True)
    return typer.Typer(help=help, rich_markup_mode="markdown", **options)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def stdout_for_json_only(enabled: bool) -> Iterator[None]:
    """With --json, whatever libraries print while the command runs goes to stderr, so that
    stdout holds exactly one JSON object."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
