"""The dataset registry. A builder takes (task, val_fraction, seed) and keyword-only params;
one that reads a file takes `path`, which a spec gives as `data.path` (not in `params`)."""

from collections.abc import Callable

from kiln.data.base import Dataset
from kiln.naming import Registry

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset", reserved=("path",))
