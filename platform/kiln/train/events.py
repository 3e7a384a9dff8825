"""A run's events, from its Train controller to the thread that reads them (the progress view
of `kiln train`, a Tune trial), with no process of their own.

    events = RunEvents(in_flight=None)        # the trainer's; its forwarder goes to the run
    ... trainer.fit() in a thread ...
    for event in events.take(timeout=0.2): ...  # {"kind": "report", "metrics", "checkpoint"?}
    events.abort()                              # Ctrl-C, or Tune stopped the trial

`ReportForwarder`, a Ray Train callback, keeps rank 0's reports and the workers' failures in
the controller's process, and the reader takes them with a call to the controller: Kiln's
controller is Ray's with one more method, in a concurrency group of its own (its own thread),
so that it answers while the control loop waits. With `in_flight`, a report waits in the
control loop until fewer than that many are untaken: a search's scheduler decides on the
epoch the run is at, not on one long past (as Ray's own TuneReportCallback does).

The reader has the controller's handle from the start (the trainer creates the controller
for it), so an abort reaches the controller whenever it comes. Before, the events went
through a Ray queue, an actor process of its own for every run and every trial: one more
such process made `kiln train jobs/digits-cnn.yaml` reach its first epoch 0.75 s later on 2
cores (median of 8 runs each, 10.60 s against 9.85 s), and the handle had to travel on the
queue.
"""

import asyncio
import threading
import time
import uuid
from typing import Any

import ray
import ray.train
from ray.actor import ActorHandle
from ray.train.v2._internal.execution.controller import TrainController

from kiln.train.mistakes import ends_the_run
from kiln.train.runtime_env import InheritingWorkerGroup

EVENTS_GROUP = "events"
ABORT_WAIT_S = 30.0


class ReportForwarder(ray.train.UserCallback):
    """Runs on the controller: keeps rank 0's metrics and worker failures until the reader
    takes them. Pickled to the controller without its state; there, the controller finds it
    by its key (Ray Train wraps user callbacks in a handler of its own)."""

    def __init__(self, in_flight: int | None = None):
        self.in_flight = in_flight
        self.key = uuid.uuid4().hex
        self._reset()

    def _reset(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._failures = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.in_flight, self.key = state["in_flight"], state["key"]
        self._reset()
        _KEPT[self.key] = self

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        event: dict[str, Any] = {"kind": "report", "metrics": metrics[0]}
        if checkpoint is not None:
            event["checkpoint"] = checkpoint.path
        self._put(event)

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        if ends_the_run(worker_exceptions):  # not retried: the run ends with it
            return
        ranks = ", ".join(str(r) for r in sorted(worker_exceptions))
        first = next(iter(worker_exceptions.values()), None)
        reason = str(first).strip().splitlines()[-1][:160] if first else "unknown"
        # As Ray's failure policy counts: a restart while failures stay within max_failures.
        self._failures += 1
        allowed = run_context.run_config.failure_config.max_failures
        retried = allowed == -1 or self._failures <= allowed
        self._put({"kind": "failure", "ranks": ranks, "reason": reason, "retried": retried})

    def _put(self, event: dict[str, Any]) -> None:
        with self._changed:
            if (limit := self.in_flight) is not None:
                self._changed.wait_for(lambda: len(self._events) < limit or self._closed)
            if not self._closed:  # closed: the reader is gone, the run being aborted
                self._events.append(event)
                self._changed.notify_all()

    def take(self, timeout: float) -> list[dict[str, Any]]:
        """The events kept so far, once there is one or `timeout` has passed."""
        with self._changed:
            self._changed.wait_for(lambda: self._events or self._closed, timeout)
            events, self._events = self._events, []
            self._changed.notify_all()
            return events

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


_KEPT: dict[str, ReportForwarder] = {}  # in a controller's process: its run's forwarder


class EventsController(TrainController):
    """Ray Train's controller, whose reader takes its run's events (from its forwarder), and
    whose workers are handed Ray Train's variables only where they do not inherit them."""

    worker_group_cls = InheritingWorkerGroup

    @ray.method(concurrency_group=EVENTS_GROUP)
    async def take_events(self, key: str, timeout: float) -> list[dict[str, Any]]:
        forwarder = _KEPT[key]
        return await asyncio.get_running_loop().run_in_executor(None, forwarder.take, timeout)

    @ray.method(concurrency_group=EVENTS_GROUP)
    async def close_events(self, key: str) -> None:
        """A report waiting for the reader goes on without it (the run is being aborted)."""
        _KEPT[key].close()


class RunEvents:
    """The reader's side: the run's events, taken from its controller while it runs, and
    the last of them as the run ends. Thread-safe: the trainer's thread attaches and
    finishes, the reader takes and aborts."""

    def __init__(self, in_flight: int | None = None):
        self.forwarder = ReportForwarder(in_flight)
        self._controller: ActorHandle | None = None
        self._attached = threading.Event()
        self._rest: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._aborted = False

    def attach(self, controller: ActorHandle) -> None:
        """The run's controller, as the trainer creates it; aborted at once if the reader
        aborted before it existed."""
        with self._lock:
            self._controller = controller
            aborted = self._aborted
        self._attached.set()
        if aborted:
            self._abort(controller)

    def finish(self) -> None:
        """The run ended: its last events are kept here before its controller goes."""
        with self._lock:
            controller, self._controller = self._controller, None
        if controller is not None:
            rest = self._taken(controller, 0.0)
            with self._lock:
                self._rest.extend(rest)

    def take(self, timeout: float) -> list[dict[str, Any]]:
        """The events so far (waiting up to `timeout` for one); [] once all were taken."""
        with self._lock:
            rest, self._rest = self._rest, []
            controller = self._controller
        if rest:
            return rest
        if controller is None:
            if self._attached.is_set():  # the run is over: its thread ends soon
                time.sleep(min(timeout, 0.05))
            else:  # not created yet
                self._attached.wait(timeout)
            return []
        return self._taken(controller, timeout)

    def abort(self, fit: threading.Thread) -> None:
        """Ends the run fitting in `fit`: a report waiting for this reader goes on, then the
        controller aborts the run (at once, or as soon as it exists)."""
        with self._lock:
            self._aborted = True
            controller = self._controller
        if controller is not None:
            self._abort(controller)
        fit.join(timeout=ABORT_WAIT_S)

    def _taken(self, controller: ActorHandle, timeout: float) -> list[dict[str, Any]]:
        try:
            return ray.get(controller.take_events.remote(self.forwarder.key, timeout))
        except ray.exceptions.RayActorError:  # the run ended (aborted, its node died): fit says
            return []

    def _abort(self, controller: ActorHandle) -> None:
        """A call to an ended run's controller fails only its reply."""
        controller.close_events.remote(self.forwarder.key)
        controller.abort.remote()
