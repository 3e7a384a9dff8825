"""Batches for one worker, from memory or from a Ray Data stream, with the same number of
steps on every rank in every epoch (DDP's gradient all-reduce and `ray.train.report` are
barriers: a rank with one batch more would hang the job).

    feed = feed_for(session, global_batch=spec.train.batch_size)
    for epoch in session.epochs():
        for inputs, targets in feed.epoch(epoch): ...          # on the worker's device
        for x, y in feed.validation(): ...                     # numpy, this rank's share

- In memory: a DistributedSampler over the arrays (it pads the last round, so every rank has
  ceil(N / world) examples), reshuffled each epoch.
- Streamed: this rank's shard of the "train" dataset. Ray Train splits it with
  `streaming_split(equal=True)`, so every rank gets the same number of rows (it leaves out
  fewer than `world` rows an epoch, counted in `rows_dropped`). Ray Data's per-batch cost is
  its largest, so whole blocks are fetched and cut into batches here, shuffled within a
  window of blocks by a seeded generator. Validation shards are not equalised
  (kiln.train.sharding's `ExactValidation`): every validation row is scored exactly once.

Both feeds time how long the training loop waits for its batches (`feed.wait`): the wait for
the first batch of an epoch is the pipeline starting; the rest is time the input could not
keep up with the model.
"""

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from kiln.data import Dataset, StreamedDataset

Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")


@dataclass
class InputWait:
    """Seconds this epoch's training loop waited for batches: for the first one, and in all."""

    first_s: float = 0.0
    total_s: float = 0.0

    def metrics(self, session: Any) -> dict[str, float]:
        """Each rank's waits, averaged over the ranks (an all-reduce: every rank calls it)."""
        first, total = session.all_sum([self.first_s, self.total_s])
        return {"input_first_batch_s": first / session.world, "input_wait_s": total / session.world}


def timed(batches: Iterator[T], wait: InputWait) -> Iterator[T]:
    """The batches, with the time spent waiting for each added to `wait`."""
    first = True
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - started
        wait.total_s += waited
        if first:
            wait.first_s, first = waited, False
        if batch is None:
            return
        yield batch


def train_loader(
    data: Dataset, global_batch: int, world: int, drop_last: bool = False
) -> DataLoader:
    """`batch_size` in a spec is global: each of the `world` workers takes its share."""
    tensors = TensorDataset(shared_tensor(data.x_train), shared_tensor(data.y_train))
    batch = max(1, global_batch // world)
    loader = DataLoader(tensors, batch_size=batch, shuffle=True, drop_last=drop_last)
    return ray.train.torch.prepare_data_loader(loader)


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over the array without a copy. Arrays from Ray's object store are read-only
    (one copy in shared memory for every worker on the node), which torch warns about: the
    loop only reads them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array)


class MemoryFeed:
    def __init__(self, data: Dataset, global_batch: int, world: int, rank: int):
        self.data, self.world, self.rank = data, world, rank
        self.loader = train_loader(data, global_batch, world)
        self.wait = InputWait()

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        self.wait = InputWait()
        yield from timed(iter(self.loader), self.wait)

    def validation(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        shard = slice(self.rank, None, self.world)
        yield self.data.x_val[shard], self.data.y_val[shard]


class StreamFeed:
    def __init__(self, global_batch: int, world: int, rank: int, device: torch.device, seed: int):
        self.batch = max(1, global_batch // world)
        self.rank, self.device, self.seed = rank, device, seed
        self.train = ray.train.get_dataset_shard("train")
        self.wait = InputWait()

    def epoch(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        self.wait = InputWait()
        for x, y in timed(rebatch(self._blocks(self.train), self.batch, rng), self.wait):
            yield (
                torch.from_numpy(x).to(self.device, non_blocking=True),
                torch.from_numpy(y).to(self.device, non_blocking=True),
            )

    def validation(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self._blocks(ray.train.get_dataset_shard("val"))

    @staticmethod
    def _blocks(shard: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            yield block["x"], block["y"]


def rebatch(
    blocks: Iterator[tuple[np.ndarray, np.ndarray]],
    size: int,
    rng: np.random.Generator,
    window: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of any lengths as batches of exactly `size` rows (and one last, shorter batch):
    rows shuffled within a window of `window` blocks. N rows always make ceil(N / size)
    batches, whatever the blocks, so ranks with equal rows take equal steps."""
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for block in blocks:
        pending.append(block)
        if len(pending) == window:
            yield from _cut(pending, size, rng, keep_tail=True)
    yield from _cut(pending, size, rng, keep_tail=False)


def _cut(
    pending: list[tuple[np.ndarray, np.ndarray]],
    size: int,
    rng: np.random.Generator,
    keep_tail: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches from the pending blocks (which it empties); with `keep_tail`, the rows that do
    not fill a batch stay pending for the next window."""
    if not pending:
        return
    x = np.concatenate([b[0] for b in pending])
    y = np.concatenate([b[1] for b in pending])
    order = rng.permutation(len(y))
    pending.clear()
    full = len(y) - len(y) % size if keep_tail else len(y)
    for start in range(0, full, size):
        rows = order[start : start + size]
        yield x[rows], y[rows]
    if keep_tail and full < len(y):
        rest = order[full:]
        pending.append((x[rest], y[rest]))


def feed_for(session: Any, global_batch: int) -> MemoryFeed | StreamFeed:
    if isinstance(session.data, StreamedDataset):
        seed = session.spec.train.seed
        return StreamFeed(global_batch, session.world, session.rank, session.device, seed)
    return MemoryFeed(session.data, global_batch, session.world, session.rank)
