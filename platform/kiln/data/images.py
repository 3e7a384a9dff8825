"""Image datasets. `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images)."""

from typing import Literal

import numpy as np

from kiln.data.base import DATASETS, Dataset, classification, require_task


@DATASETS.register("digits")
def digits(
    task: str, val_fraction: float, seed: int, *, layout: Literal["image", "sequence"] = "image"
) -> Dataset:
    """layout=image: (1, 8, 8) for MLP and CNN; layout=sequence: 8 rows of 8 pixels for an RNN."""
    from sklearn.datasets import load_digits  # here: Ray Data's workers import this module

    require_task("digits", task, ("classification", "generation"))
    bunch = load_digits()
    pixels = (bunch.images / 16.0).astype(np.float32)  # (N, 8, 8) in [0, 1]
    x = pixels[:, None] if layout == "image" else pixels
    transform = {"scale": 1 / 16.0, "note": "raw pixels are 0..16"}
    data = classification(x, bunch.target, val_fraction, seed, transform=transform)
    data.schema.task = task
    return data
