"""Jobs on a cluster through Ray's Jobs API, with Kiln's errors and exit codes.

jobs = Jobs(resolve_address(args.address))
submission_id = jobs.submit(submission)
status = jobs.follow(submission_id, print)   # streams the logs until the job ends
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from kiln.cluster.dashboard import answered_by, describe, open_client
from kiln.cluster.submission import Submission
from kiln.cluster.upload import too_large, uploaded_files
from kiln.errors import ClusterError, JobNotFoundError, KilnError, PreflightError

# `kiln jobs status`, `kiln jobs logs --follow` and `kiln submit --follow` exit with these.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 5, "PENDING": 6, "RUNNING": 6}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class Jobs:
    def __init__(self, address: str):
        from ray.job_submission import JobSubmissionClient

        quiet_ray_logs()
        self.address = address
        self.client = open_client(JobSubmissionClient, address)

    def submit(self, submission: Submission) -> str:
        try:
            with answered_by(self.address):
                return str(self.client.submit_job(**submission.to_ray()))
        except ClusterError as e:
            if "status code 413" not in str(e):
                raise
            files = uploaded_files(submission.working_dir, submission.excludes)
            raise PreflightError(
                too_large(submission.working_dir, files, "the cluster refused its zip")
            ) from None

    def list(self) -> list[dict[str, Any]]:
        with answered_by(self.address):
            details = self.client.list_jobs()
        jobs = [as_json(d) for d in details if d.submission_id]
        return sorted(jobs, key=lambda job: job.get("start_time") or 0, reverse=True)

    def info(self, submission_id: str) -> dict[str, Any]:
        with self.about(submission_id):
            return as_json(self.client.get_job_info(submission_id))

    def status(self, submission_id: str) -> str:
        return str(self.info(submission_id)["status"])

    def logs(self, submission_id: str) -> str:
        with self.about(submission_id):
            return str(self.client.get_job_logs(submission_id))

    def follow(self, submission_id: str, write: Callable[[str], None]) -> str:
        """Streams the logs (from the start) until the job ends; returns its final status."""
        self.info(submission_id)  # an unknown id fails here, not inside the stream

        async def stream() -> None:
            lines: Any = self.client.tail_job_logs(submission_id)  # an async generator
            try:
                async for chunk in lines:
                    write(chunk)
            finally:  # on Ctrl-C too: the websocket closes inside the loop
                await lines.aclose()

        with self.about(submission_id):
            asyncio.run(stream())
        return self.wait(submission_id, timeout_s=30)

    def stop(self, submission_id: str, timeout_s: float = 60) -> str:
        """Asks Ray to stop the job (SIGTERM, then SIGKILL) and waits until it has."""
        if (status := self.status(submission_id)) in TERMINAL:
            return status
        with self.about(submission_id):
            self.client.stop_job(submission_id)
        return self.wait(submission_id, timeout_s)

    def wait(self, submission_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (status := self.status(submission_id)) not in TERMINAL:
            if time.monotonic() > deadline:
                raise ClusterError(f"job {submission_id} is still {status} after {timeout_s:.0f} s")
            time.sleep(0.5)
        return status

    @contextlib.contextmanager
    def about(self, submission_id: str) -> Iterator[None]:
        """Errors of a call about one job; Ray answers 404 for an unknown id."""
        try:
            yield
        except KilnError:
            raise
        except Exception as e:
            if "status code 404" in str(e) or "does not exist" in str(e):
                raise JobNotFoundError(
                    f"no job {submission_id!r} on the cluster at {self.address} "
                    "(`kiln jobs list` shows its jobs)"
                ) from None
            raise ClusterError(describe(e, self.address)) from None


def quiet_ray_logs() -> None:
    """Not a line per file uploaded, when a log stream closes, or that Ray now skips .git and
    .venv by default (Kiln skips them too): Kiln reports what matters itself."""
    levels = {
        "ray": logging.WARNING,
        "ray.dashboard.modules.job.sdk": logging.WARNING,
        "ray.dashboard.modules.dashboard_sdk": logging.WARNING,
        "ray._private.runtime_env": logging.ERROR,
    }
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def as_json(details: Any) -> dict[str, Any]:
    """A job's details for people and scripts; env var values (which may hold credentials) are
    left out, their names kept."""
    raw = details.dict() if hasattr(details, "dict") else dict(vars(details))
    job = {k: (v.value if hasattr(v, "value") else v) for k, v in raw.items()}
    env = (job.get("runtime_env") or {}).get("env_vars")
    if env:
        job["runtime_env"] = {**job["runtime_env"], "env_vars": sorted(env)}
    return job


def exit_code(status: str) -> int:
    return EXIT_CODES.get(status, 1)
