"""Shared output helpers: JSON for scripts, rich for people."""

import json
from typing import Any

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
