"""A trial's Train run, reported to Tune from the trial's own thread.

The trial fits its Train run in a thread and hands each epoch to Tune itself (`tune.report`)
rather than through Ray's TuneReportCallback, so that it can end the run when Tune is done
with the trial. Tune stops a trial (ASHA) or pauses it (PBT) by raising SystemExit in the
trial's thread at its next `tune.report`; the trial then aborts its run's controller, and its
process is free at once for the next trial (`reuse_actors`): kiln and Ray Train stay imported
there. Before, a stopped trial stayed blocked in its Train run, and only FIFO searches could
reuse trial processes.
"""

import os
import threading
from collections.abc import Callable
from typing import Any

from kiln.train.mistakes import mistake_of

# Tune waits this long for a stopped trial's thread before it hands the process to the next
# trial (and fails that trial if the thread is still running); its default, 2 s, is shorter
# than the controller's abort on a busy machine.
THREAD_TIMEOUT_S = "60"


def fit_reporting(trainer: Any, report: Callable[[dict[str, Any]], None]) -> None:
    """`trainer.fit()` in a thread (a kiln.train.trainer, its events read here), each report
    passed to `report` (which calls `tune.report`) on this one. A failure of the fit is
    raised here, after the last report; Tune stopping the trial aborts the run."""
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", THREAD_TIMEOUT_S)
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # re-raised on the trial's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="kiln-trial-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            _report_each(trainer.events.take(timeout=0.5), report)
        _report_each(trainer.events.take(timeout=0), report)  # the run's last
    except BaseException:  # SystemExit: Tune stopped or paused the trial
        trainer.events.abort(thread)
        raise
    if "error" in outcome:
        error = outcome["error"]
        raise mistake_of(error) or error


def _report_each(events: list[dict[str, Any]], report: Callable[[dict[str, Any]], None]) -> None:
    for event in events:
        if event["kind"] == "report":
            report(event)
