"""How far a version's live traffic has moved from the data it was trained on.

A supervised model is registered with a reference: up to 2,000 training inputs as the model
takes them (`reference.npy`, after the preprocessing fitted at training; kiln.train.publish).
When a replica loads the version it profiles them: per input feature, the reference's deciles
as bin edges (fewer bins where values repeat) and each bin's share; for the output likewise,
on the predicted class (classifiers) or the mean score. Answered requests' inputs and outputs
go to a window of the last `window` rows (a ring buffer, `share` of the requests), and every
tick of the endpoint's watcher the window is compared with the profile, per feature and for
the output:

- PSI, the population stability index: sum over bins of (live - ref) * ln(live / ref).
  Read as below 0.1 stable, 0.1-0.25 moderate, above 0.25 shifted (the usual bands; the alert
  rules in k8s/base/alert-rules.yaml fire above 0.25).
- KS: the largest gap between the reference's and the window's distribution functions at the
  bin edges (the Kolmogorov-Smirnov statistic on binned data).

Two reference-sized samples of the same distribution give a PSI near (bins - 1) * (1/n + 1/m),
about 0.01 here, so a window exports nothing until it holds `min_rows` rows.
"""

import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kiln.serve.config import Drift
from kiln.serve.replica.metrics import DriftMetrics

BINS = 10
FLOOR = 1e-4  # a bin's share at least this: an empty bin would make PSI infinite
INPUTS, OUTPUT = "_inputs", "_output"  # the largest over features, and the output's
SHIFTED = 0.25  # a PSI above this is a shifted distribution (k8s/base/alert-rules.yaml)


@dataclass
class Column:
    """One feature's (or the output's) reference: inner bin edges, and per bin its share."""

    edges: np.ndarray
    shares: np.ndarray

    @staticmethod
    def fit(values: np.ndarray, categories: int | None = None) -> "Column":
        if categories:  # one bin per class
            edges = np.arange(categories - 1) + 0.5
        else:
            edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
        return Column(edges, _shares(values, edges))

    def compare(self, values: np.ndarray) -> tuple[float, float]:
        """PSI and KS of `values` against the reference."""
        live = _shares(values, self.edges)
        reference, window = np.maximum(self.shares, FLOOR), np.maximum(live, FLOOR)
        psi = float(np.sum((window - reference) * np.log(window / reference)))
        ks = float(np.max(np.abs(np.cumsum(live) - np.cumsum(self.shares))))
        return psi, ks


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def output_values(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, int | None]:
    """One value per row: the predicted class of a classifier (and how many there are), else
    the mean of the first output."""
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"]
        return probabilities.argmax(axis=1).astype(np.float32), probabilities.shape[1]
    first = np.asarray(next(iter(outputs.values())), dtype=np.float32)
    return first.reshape(len(first), -1).mean(axis=1), None


def feature_rows(x: torch.Tensor) -> np.ndarray | None:
    """A batch as (rows, features), or None for inputs that are not measurements (token ids)."""
    if not x.is_floating_point():
        return None
    return x.detach().numpy().reshape(len(x), -1)


@dataclass
class Profile:
    features: list[Column]  # empty when the inputs are token ids
    output: Column

    @staticmethod
    def of(predictor: Any) -> "Profile | None":
        """The predictor's reference profiled (None: it was registered without one)."""
        reference = predictor.reference
        if reference is None or not len(reference):
            return None
        x = torch.from_numpy(reference)
        values, categories = output_values(predictor.run(x))
        rows = feature_rows(x)
        features = [] if rows is None else [Column.fit(column) for column in rows.T]
        return Profile(features, Column.fit(values, categories))


class Window:
    """The last `size` rows of inputs and outputs, written by requests and read by the
    watcher thread."""

    def __init__(self, size: int, features: int):
        self.x = np.zeros((size, features), np.float32)
        self.y = np.zeros(size, np.float32)
        self.next = self.rows = 0
        self.lock = threading.Lock()

    def add(self, x: np.ndarray | None, y: np.ndarray) -> None:
        size = len(self.y)
        x, y = (x[-size:] if x is not None else None), y[-size:]
        at = (self.next + np.arange(len(y))) % size
        with self.lock:
            if x is not None and self.x.shape[1]:
                self.x[at] = x
            self.y[at] = y
            self.next = (self.next + len(y)) % size
            self.rows = min(self.rows + len(y), size)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.x[: self.rows].copy(), self.y[: self.rows].copy()


class DriftMonitor:
    """Per loaded version with a reference: its profile and its window of live traffic."""

    def __init__(self, config: Drift, metrics: DriftMetrics, names: list[str] | None = None):
        self.config, self.metrics, self.names = config, metrics, names
        self.watched: dict[int, tuple[Profile, Window]] = {}
        self._random = random.Random()

    def watch(self, predictor: Any) -> None:
        """Profile a version that has just loaded (no-op without a reference)."""
        if predictor.version not in self.watched and (profile := Profile.of(predictor)):
            window = Window(self.config.window, len(profile.features))
            self.watched[predictor.version] = (profile, window)

    def observe(self, version: int, x: torch.Tensor, outputs: dict[str, np.ndarray]) -> None:
        """On the hot path: a sampled copy of one request's rows into its version's window."""
        watched = self.watched.get(version)
        if watched is None or self._random.random() >= self.config.share:
            return
        profile, window = watched
        values, _ = output_values(outputs)
        window.add(feature_rows(x) if profile.features else None, values)

    def export(self, loaded: set[int]) -> None:
        """PSI and KS of every loaded version's window holding at least `min_rows` rows."""
        for version in [v for v in self.watched if v not in loaded]:
            del self.watched[version]
        for version, (profile, window) in list(self.watched.items()):
            self.metrics.rows(version, window.rows)
            if window.rows < self.config.min_rows:
                continue
            x, y = window.snapshot()
            per_feature = [column.compare(x[:, i]) for i, column in enumerate(profile.features)]
            self.metrics.drifted(version, OUTPUT, *profile.output.compare(y))
            if per_feature:
                largest = np.max(per_feature, axis=0)
                self.metrics.drifted(version, INPUTS, float(largest[0]), float(largest[1]))
            if len(per_feature) <= self.metrics.max_features:
                names = self.names or []
                if len(names) != len(per_feature):  # image pixels, series steps: by position
                    names = [f"x{i}" for i in range(len(per_feature))]
                for name, (psi, ks) in zip(names, per_feature, strict=True):
                    self.metrics.drifted(version, name, psi, ks)
