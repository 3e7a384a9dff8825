"""The feed's accounting of the time a training loop waits for its batches (pure logic)."""

import time
from collections.abc import Iterator

from kiln.train.feed import InputWait, timed
from kiln.train.progress import input_bound


def slow_batches(delays: list[float]) -> Iterator[int]:
    for index, delay in enumerate(delays):
        time.sleep(delay)
        yield index


def test_timed_passes_every_batch_and_counts_the_waits():
    wait = InputWait()
    assert list(timed(slow_batches([0.05, 0.0, 0.02]), wait)) == [0, 1, 2]
    assert wait.first_s >= 0.05  # the pipeline's start
    assert wait.total_s >= wait.first_s + 0.02  # and every later wait, the end included


def test_an_empty_epoch_waits_only_for_its_end():
    wait = InputWait()
    assert list(timed(iter([]), wait)) == []
    assert wait.first_s == wait.total_s >= 0


def test_progress_says_when_an_epoch_waited_mostly_for_data():
    assert input_bound({"input_wait_s": 3.0, "epoch_time_s": 10.0}) == " (3.0s waiting for data)"
    assert input_bound({"input_wait_s": 1.0, "epoch_time_s": 10.0}) == ""
    assert input_bound({"epoch_time_s": 10.0}) == ""  # loops that do not measure it
