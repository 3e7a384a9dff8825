from kiln.features.breaker import CircuitBreaker


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_retries_after_reset():
    clock = Clock()
    breaker = CircuitBreaker(fail_max=3, reset_s=2, clock=clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a success in between resets the count
    breaker.failed()
    breaker.failed()
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 2.0
    assert breaker.state == "half-open" and breaker.allow()
    breaker.failed()  # the trial failed: open for another reset_s
    assert not breaker.allow()
    clock.now = 4.0
    breaker.succeeded()
    assert breaker.state == "closed"
