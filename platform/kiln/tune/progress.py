"""Live progress of a search: a Ray Tune callback (it runs on the driver) that keeps a table
of trials (running, stopped early, done, failed) and the best so far.

Tune pickles its callbacks with the experiment (to resume it), so the view keeps only plain
state; the terminal display is created when the experiment starts and dropped when pickled."""

from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from kiln.spec import TuneSpec

# The trials each search left unfinished when it ended, by search name. Tune ends a search
# early on Ctrl-C and stops its running trials without completing them; on --resume it runs
# its own unpickled copy of the view, so the record is kept here rather than on the view.
ENDED_EARLY: dict[str, list[str]] = {}
FINAL = ("STOPPED", "DONE", "ERROR")


class SearchView(Callback):
    def __init__(self, name: str, spec: TuneSpec, quiet: bool = False):
        self.name, self.metric, self.mode = name, spec.metric or "", spec.mode or "max"
        self.quiet = quiet
        self.trials: dict[str, dict[str, Any]] = {}
        self._live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        if not self.quiet:
            self._live = Live(self.table(), console=Console(), refresh_per_second=4)
            self._live.start()

    def on_experiment_end(self, trials, **info) -> None:
        ENDED_EARLY[self.name] = [t.trial_id for t in trials if self._unfinished(t)]
        if self._live is not None:
            self._live.update(self.table())
            self._live.stop()
            if not self._live.console.is_terminal:  # rich ends the frame with a line only there
                self._live.console.line()
            self._live = None

    def _unfinished(self, trial) -> bool:
        """Never started, or started in this run and stopped by Tune's cleanup (its status
        then reads TERMINATED) without completing; not one a resumed search had finished."""
        status = self.trials.get(trial.trial_id, {}).get("status", "PENDING")
        if status != "PENDING":
            return status not in FINAL
        return trial.status not in ("TERMINATED", "ERROR")

    # Tune's callback hooks ---------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["status"] = "RUNNING"
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        row["epoch"] = result.get("epoch", 0)
        value = result.get(self.metric)
        if value is not None:
            row["last"] = value
            better = row.get("best") is None or (
                value > row["best"] if self.mode == "max" else value < row["best"]
            )
            row["best"] = value if better else row["best"]
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        epochs = trial.last_result.get("epochs", 0)
        stopped = row.get("epoch", 0) < epochs and not trial.last_result.get("early_stopped", False)
        row["status"] = "STOPPED" if stopped else "DONE"
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["status"] = "ERROR"
        if self._live is not None:
            reason = escape(_last_line(trial.error_file))  # error text may hold [brackets]
            kept = f"{trial.path}/{trial.run_metadata.error_filename}"  # in the search's storage
            self._live.console.print(
                f"[yellow]trial {trial.trial_id} failed: {reason} (traceback: {escape(kept)})"
            )
        self._refresh()

    # drawing ---------------------------------------------------------------------------

    def _row(self, trial) -> dict[str, Any]:
        return self.trials.setdefault(trial.trial_id, {"config": trial.config, "status": "PENDING"})

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.table())

    def best(self) -> tuple[str, float] | None:
        scored = [
            (tid, row["best"]) for tid, row in self.trials.items() if row.get("best") is not None
        ]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda item: item[1])

    def table(self) -> Table:
        counts = {
            s: sum(r["status"] == s for r in self.trials.values())
            for s in ("RUNNING", "STOPPED", "DONE", "ERROR")
        }
        best = self.best()
        title = f"search {self.name}: " + ", ".join(
            f"{n} {s.lower()}" for s, n in counts.items() if n
        )
        if best:
            title += f"; best {self.metric}={best[1]:.4f} ({best[0]})"
        table = Table(title=title, title_justify="left")
        for column in ("trial", "status", "epoch", self.metric or "metric", "best", "config"):
            table.add_column(column)
        for trial_id, row in self.trials.items():
            config = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row["config"].items())
            table.add_row(
                trial_id,
                row["status"],
                str(row.get("epoch", "")),
                _short(row.get("last")),
                _short(row.get("best")),
                config,
            )
        return table


def _short(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_line(path: str | None) -> str:
    """The error's own line: the last of the traceback Tune kept for the trial."""
    try:
        lines = Path(path or "").read_text().strip().splitlines()
    except OSError:
        return "see the trial's error.txt"
    return lines[-1][:300] if lines else "unknown error"
