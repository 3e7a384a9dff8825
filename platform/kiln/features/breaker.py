"""A circuit breaker for Redis calls: after `fail_max` consecutive failures the circuit opens
and calls are skipped (answers degrade at once instead of each waiting for a timeout); after
`reset_s` one trial call is let through, and a success closes the circuit again.

Written by hand (25 lines): pybreaker wraps synchronous calls only through its own decorators
and counts state in ways we do not need; this one is driven by the caller, sync or async."""

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, fail_max: int = 3, reset_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ):
        self.fail_max, self.reset_s, self.clock = fail_max, reset_s, clock
        self.failures = 0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def succeeded(self) -> None:
        with self._lock:
            self.failures, self.opened_at = 0, None

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.fail_max or self.opened_at is not None:
                self.opened_at = self.clock()  # (re)open; a failed trial waits another reset_s
