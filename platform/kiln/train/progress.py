"""Live progress: a `ray.train.UserCallback` on the Train controller sends every report to a
Ray queue; the driver reads the queue and draws it (rich progress bar, a line per epoch)."""

import threading
import time
from typing import Any

import ray
import ray.train
from ray import cloudpickle
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.util.queue import Empty, Queue
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ReportForwarder(ray.train.UserCallback):
    """Runs on the controller process: forwards rank 0's metrics and worker failures. The
    controller unpickles this class: its module must stay light to import (kiln.tune's
    would cost every run 1.5 s of CPU)."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        event: dict[str, Any] = {"kind": "report", "metrics": metrics[0]}
        if checkpoint is not None:
            event["checkpoint"] = checkpoint.path
        self.queue.put(event)

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        ranks = ", ".join(str(r) for r in sorted(worker_exceptions))
        first = next(iter(worker_exceptions.values()), None)
        reason = str(first).strip().splitlines()[-1][:160] if first else "unknown"
        self.queue.put({"kind": "failure", "ranks": ranks, "reason": reason})


class ControllerHandle(ControllerCallback):
    """Sends the controller's handle to the queue's reader as the controller starts, with
    which the reader can abort the run (Ctrl-C; a Tune trial, when Tune stops it). It goes
    pickled, and only an abort unpickles it: Ray registers every actor handle it
    deserializes with the actor's owner, and the queue's actor, doing so, answered no `get`
    for 0.6-0.8 s. Sent with the first report, the handle held that report back from the
    reader as long (of a 14 s `kiln train` to its first epoch); sent as Ray's own, at the
    start, it slowed the workers' start as much. Out of band, the handle does not keep the
    controller alive: the run's own caller (`fit`) does, and an abort after the run ended
    fails only its reply. Ray Train's controller hooks are a developer API
    (tests/train/test_trainer.py fails if they change)."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_controller_start(self, train_run_context) -> None:
        handle = cloudpickle.dumps(ray.get_runtime_context().current_actor)
        put = self.queue.actor.put  # the queue's actor method; Queue.put waits for it
        put.remote({"kind": "controller", "controller": handle}, None)  # type: ignore[attr-defined]


def forwarders(queue: Queue) -> list:
    """The run callbacks that feed `queue`: its reports and failures, and its controller."""
    return [ReportForwarder(queue), ControllerHandle(queue)]


ABORT_WAIT_S = 30.0
HANDLE_WAIT_S = 5.0


def abort(controller: bytes | None, queue: Queue, thread: threading.Thread, reported: bool) -> None:
    """Ends a Train run fitting in `thread` (its reports on `queue`; `controller`, the pickled
    handle sent as the controller started, or None). A reader that has a report (`reported`)
    but not yet the handle waits for it. The queue goes first, as the controller may be
    blocked putting a report on it; should the abort not reach the controller, the run's next
    report fails it."""
    if controller is None and reported:
        controller = _awaited_controller(queue)
    queue.shutdown(force=True)
    if controller is not None:
        _abort_controller(controller)
    thread.join(timeout=ABORT_WAIT_S)


def _abort_controller(pickled: bytes) -> None:
    """A call to an ended run's controller fails only its reply. A driver without a Ray
    worker of its own (Ray Client) cannot restore the handle: the queue's end stops the run."""
    try:
        handle = cloudpickle.loads(pickled)
    except Exception:
        return
    handle.abort.remote()


def _awaited_controller(queue: Queue) -> bytes | None:
    deadline = time.monotonic() + HANDLE_WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = queue.get(timeout=left)
        except Empty:
            return None
        if event["kind"] == "controller":  # the events before it are dropped: the run ends
            return event["controller"]
    return None


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

    def drain(self, queue: Queue, timeout: float = 0.2) -> list[dict[str, Any]]:
        """Shows the events waiting on `queue` (for up to `timeout`), and returns them."""
        try:
            events = [queue.get(timeout=timeout)]
            while not queue.empty():
                events.append(queue.get_nowait())
        except Empty:
            return []
        for event in events:
            self.show(event)
        return events

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def waiting(self, why: str) -> None:
        """The workers have not started yet, and why."""
        self.bar.update(self.task, status="waiting for resources")
        self.bar.console.print(f"[yellow]waiting: {escape(why)}")

    def show(self, event: dict[str, Any]) -> None:
        if event["kind"] == "controller":  # the run's handle, for its reader (see abort)
            return
        self.events.append(event)
        if event["kind"] == "failure":
            reason = escape(event["reason"])  # error text may hold [brackets]
            self.bar.console.print(
                f"[yellow]worker {event['ranks']} failed ({reason}); "
                "restarting from the last checkpoint"
            )
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
