"""Live progress: the driver takes a run's events from its controller (kiln.train.events) and
draws them (rich progress bar, a line per epoch)."""

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kiln.train.events import RunEvents


class ProgressView:
    """Draws events on the terminal; `quiet` keeps it silent (for --json and scripts)."""

    def __init__(self, job: str, epochs: int, metric: str, console: Console, quiet: bool = False):
        self.job, self.metric, self.quiet = job, metric, quiet
        self.console = console
        self.events: list[dict[str, Any]] = []
        self.first_report_s: float | None = None
        self.started = time.monotonic()
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} epochs"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
            transient=True,
        )
        self.task = self.bar.add_task(job, total=epochs, status="starting workers")

    def __enter__(self) -> "ProgressView":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def drain(self, events: RunEvents, timeout: float = 0.2) -> None:
        """Shows the run's events so far (waiting up to `timeout` for one)."""
        for event in events.take(timeout):
            self.show(event)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def waiting(self, why: str) -> None:
        """The workers have not started yet, and why."""
        self.bar.update(self.task, status="waiting for resources")
        self.bar.console.print(f"[yellow]waiting: {escape(why)}")

    def show(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["kind"] == "failure":
            reason = escape(event["reason"])  # error text may hold [brackets]
            then = (
                "restarting from the last checkpoint"
                if event.get("retried", True)
                else "no restart left (failure.max_failures)"
            )
            self.bar.console.print(f"[yellow]worker {event['ranks']} failed ({reason}); {then}")
            return
        m = event["metrics"]
        if self.first_report_s is None:
            self.first_report_s = time.monotonic() - self.started
        status = f"{self.metric}={m[self.metric]:.4f}"
        self.bar.update(self.task, completed=m["epoch"], status=status)
        if not self.quiet:
            shown = "  ".join(
                f"{k}={v:.4f}" for k, v in m.items() if k.startswith("val_") or k.endswith("_loss")
            )
            resumed = f"  (resumed at epoch {m['resumed_from']})" if m["resumed_from"] >= 0 else ""
            self.bar.console.print(
                f"epoch {m['epoch']:>3}/{m['epochs']}  {shown}  {m['epoch_time_s']:.1f}s"
                f"{input_bound(m)}{resumed}"
            )


def input_bound(metrics: dict[str, Any]) -> str:
    """A note when the epoch spent over a fifth of its time waiting for data: the input
    pipeline, not the model, sets the pace (more read parallelism or CPUs would help)."""
    waited = metrics.get("input_wait_s", 0.0)
    return f" ({waited:.1f}s waiting for data)" if waited > 0.2 * metrics["epoch_time_s"] else ""
