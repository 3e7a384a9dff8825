"""Drift statistics and the sampled access log (pure logic): PSI and KS against known values,
the live window as a ring, the output summarised per row, and which answers are logged."""

import logging

import numpy as np
import pytest
import torch

from kiln.serve.config import Drift
from kiln.serve.replica.access import AccessLog
from kiln.serve.replica.drift import SHIFTED, Column, DriftMonitor, Window, output_values


def test_psi_and_ks_match_their_definitions():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    column = Column.fit(reference)
    assert len(column.edges) == 9 and column.shares == pytest.approx(np.full(10, 0.1), abs=1e-3)

    same_psi, same_ks = column.compare(rng.normal(size=2000))
    assert same_psi < 0.02 and same_ks < 0.05  # noise: about 9 * (1/5000 + 1/2000)
    shifted_psi, shifted_ks = column.compare(rng.normal(loc=1.0, size=2000))
    assert shifted_psi > SHIFTED and shifted_ks > 0.3  # Phi(0) - Phi(-1) = 0.34
    # By hand: half the rows move from the lowest decile to the highest.
    moved = np.concatenate([np.full(50, -9.0), np.full(850, 0.0), np.full(100, 9.0)])
    by_hand = Column(np.array([-1.0, 1.0]), np.array([0.1, 0.8, 0.1]))
    psi, ks = by_hand.compare(moved)
    expected = (0.05 - 0.1) * np.log(0.05 / 0.1) + (0.85 - 0.8) * np.log(0.85 / 0.8)
    assert psi == pytest.approx(expected) and ks == pytest.approx(0.05)


def test_classes_are_one_bin_each_and_repeated_values_merge_bins():
    classes = Column.fit(np.array([0, 0, 1, 2, 2, 2], np.float32), categories=4)
    assert classes.shares == pytest.approx([2 / 6, 1 / 6, 3 / 6, 0])
    pixels = Column.fit(np.r_[np.zeros(700), np.linspace(0.1, 1, 300)])  # mostly blank
    assert pixels.edges[0] == 0.0 and len(pixels.edges) < 9
    assert pixels.compare(np.zeros(100))[0] < pixels.compare(np.ones(100))[0]


def test_the_window_keeps_the_last_rows():
    window = Window(size=4, features=2)
    window.add(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 2], np.float32))
    window.add(np.full((3, 2), 9, np.float32), np.array([3, 4, 5], np.float32))
    x, y = window.snapshot()
    assert window.rows == 4 and sorted(y) == [2, 3, 4, 5] and (x == 9).sum() == 6
    window.add(None, np.arange(10, dtype=np.float32))  # more than it holds, outputs only
    assert sorted(window.snapshot()[1]) == [6, 7, 8, 9]


def test_outputs_are_a_class_per_row_or_a_mean_score():
    values, classes = output_values({"probabilities": np.array([[0.1, 0.9], [0.8, 0.2]])})
    assert values.tolist() == [1, 0] and classes == 2
    values, classes = output_values({"output": np.array([[1.0, 3.0], [2.0, 2.0]])})
    assert values.tolist() == [2.0, 2.0] and classes is None


class Scaled:
    """A stand-in predictor: what DriftMonitor reads of one (version, reference, run)."""

    version = 1

    def __init__(self, reference):
        self.reference = reference

    def run(self, x):
        return {"output": x.sum(dim=1, keepdim=True).numpy()}


class Recorded:
    max_features = 64

    def __init__(self):
        self.psi: dict[str, float] = {}

    def drifted(self, version, feature, psi, ks):
        self.psi[feature] = psi

    def rows(self, version, rows):
        self.rows_seen = rows


def test_a_monitor_exports_only_full_enough_windows_of_loaded_versions():
    rng = np.random.default_rng(1)
    metrics = Recorded()
    monitor = DriftMonitor(Drift(window=500, min_rows=100), metrics, names=["a", "b"])
    monitor.watch(Scaled(rng.normal(size=(1000, 2)).astype(np.float32)))
    x = torch.from_numpy(rng.normal(size=(50, 2)).astype(np.float32))
    monitor.observe(1, x, {"output": x.sum(dim=1, keepdim=True).numpy()})
    monitor.export({1})
    assert metrics.rows_seen == 50 and metrics.psi == {}  # below min_rows
    shifted = x + 3
    for _ in range(3):
        monitor.observe(1, shifted, {"output": shifted.sum(dim=1, keepdim=True).numpy()})
    monitor.export({1})
    assert set(metrics.psi) == {"_inputs", "_output", "a", "b"}
    assert metrics.psi["_inputs"] == max(metrics.psi["a"], metrics.psi["b"]) > SHIFTED
    monitor.observe(2, x, {})  # a version never watched is ignored
    monitor.export(set())  # version 1 unloaded: forgotten
    assert monitor.watched == {}


def test_every_error_is_logged_and_a_share_of_the_rest(caplog):
    access = AccessLog("digits-cnn", share=0.0)
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        access.answered(3, 200, 1.5, "candidate")
        access.answered(3, 400, 0.7, None)
        access.answered(3, 500, 9.0, "candidate")
    assert [(r.status, r.levelname) for r in caplog.records] == [(400, "INFO"), (500, "WARNING")]
    record = caplog.records[1]
    assert (record.model, record.version, record.arm, record.latency_ms) == (
        "digits-cnn", 3, "candidate", 9.0
    )  # fmt: skip
    caplog.clear()
    access.share = 1.0
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        access.answered(3, 200, 1.5, None)
    assert caplog.records[0].getMessage() == "digits-cnn v3 200 1.5 ms"
