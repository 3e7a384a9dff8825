"""A mistake ends a run at once: a SpecError raised on a worker (a network that does not fit
its data, a builder that fails) is repeated by every restart, so Ray Train's retries
(`failure.max_failures`, meant for lost workers) would only delay the one line that says it.
So does a full disk or quota: every restart would write the same checkpoint to it.

    controller_kwargs["failure_policy"] = MistakesEndTheRun(failure_config)
"""

import errno
from collections.abc import Mapping

from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2.api.exceptions import TrainingFailedError

from kiln.errors import SpecError


def mistake(worker_failures: Mapping[int, BaseException]) -> SpecError | None:
    """The first mistake among a run's worker failures (ranks that fail later fail on it)."""
    return next((e for e in worker_failures.values() if isinstance(e, SpecError)), None)


def mistake_of(error: BaseException) -> SpecError | None:
    """The mistake that failed a run: `error` is Ray Train's (a WorkerGroupError holds its
    workers' failures; other errors hold none)."""
    return mistake(getattr(error, "worker_failures", {}))


FULL = {errno.ENOSPC, errno.EDQUOT}


def no_space(worker_failures: Mapping[int, BaseException]) -> OSError | None:
    """A worker's write that found no space left (on its device, or in its quota)."""
    failures = worker_failures.values()
    return next((e for e in failures if isinstance(e, OSError) and e.errno in FULL), None)


def disk_full(error: BaseException) -> OSError | None:
    return no_space(getattr(error, "worker_failures", {}))


def ends_the_run(worker_failures: Mapping[int, BaseException]) -> BaseException | None:
    """A failure that every restart would repeat: a mistake, or no space left."""
    return mistake(worker_failures) or no_space(worker_failures)


class MistakesEndTheRun(DefaultFailurePolicy):
    """Ray's policy (Ray 2.60's private DefaultFailurePolicy), which retries any worker
    failure, except a mistake or a full disk."""

    def _is_retryable_error(self, training_failed_error: TrainingFailedError) -> bool:
        retryable = super()._is_retryable_error(training_failed_error)
        failures = getattr(training_failed_error, "worker_failures", {})
        return retryable and not ends_the_run(failures)
