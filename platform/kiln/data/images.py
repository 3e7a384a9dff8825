"""Image datasets. `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images);
`image_folder`: your own image files (PNG, JPEG, ...), in memory or streamed by size."""

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pyarrow.fs
from pydantic import BeforeValidator, PositiveInt

from kiln import preprocess
from kiln.data.base import DATASETS, Dataset, classification, require_task
from kiln.data.shards import files_fingerprint, list_files, scheme
from kiln.data.stream import (
    StreamedDataset,
    class_indices,
    in_memory,
    labels_of,
    merged_labels,
    merged_moments,
    root_cause,
    should_stream,
    stream,
)
from kiln.errors import DataError
from kiln.schema import DataSchema


@DATASETS.register("digits", imports=("sklearn.datasets",))
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FILE_BLOCK_BYTES = 4 * 2**20  # image files read together in one Ray Data task


@dataclass(frozen=True)
class ImageFiles:
    """A folder of images with one sub-folder per class (`cats/1.png`), or a CSV manifest
    `path,label` (paths relative to it); local, s3:// or gs://. A `stream.Source`."""

    root: str  # the folder (or the manifest's folder), without a scheme
    files: list[str]  # what Ray Data reads: local paths or URIs, sorted
    labels: list[str]
    bytes: int
    fingerprint: str

    @classmethod
    def open(cls, path: str) -> "ImageFiles":
        filesystem, found = list_files(path, IMAGE_SUFFIXES + (".csv",))
        manifests = [i for i in found if i.path.lower().endswith(".csv")]
        if manifests and len(found) == 1:
            root = posixpath.dirname(manifests[0].path)
            table = _manifest(filesystem, manifests[0].path, root)
            infos = filesystem.get_file_info(table.path.tolist())
            if missing := [i.path for i in infos if i.type == pyarrow.fs.FileType.NotFound]:
                raise DataError(f"{manifests[0].path} lists {missing[0]}, which does not exist")
            files, labels = table.path.tolist(), table.label.tolist()
        else:
            infos = sorted(
                (i for i in found if i.path.lower().endswith(IMAGE_SUFFIXES)), key=lambda i: i.path
            )
            if not infos:
                raise DataError(f"no image files in {path} (a folder per class, or a manifest)")
            root = _without_scheme(path).rstrip("/")
            files = [i.path for i in infos]
            labels = [posixpath.basename(posixpath.dirname(f)) for f in files]
            if len(set(labels)) < 2:
                raise DataError(
                    f"{path}: images of one class ({labels[0]!r}) only; give a folder per class"
                )
        prefix = scheme(path)
        return cls(
            root,
            [prefix + f for f in files],
            labels,
            sum(i.size or 0 for i in infos),
            files_fingerprint(infos),
        )

    def explain(self, error: Exception) -> str:
        return root_cause(error)

    def dataset(self, columns: list[str]):
        """Rows of `bytes` (the encoded file), `label` and `file` (its path below the root,
        which the split hashes)."""
        import ray.data

        tasks = max(1, min(len(self.files), self.bytes // FILE_BLOCK_BYTES + 1))
        read = ray.data.read_binary_files(self.files, include_paths=True, override_num_blocks=tasks)
        named = {"root": self.root, "labels": dict(zip(self._keys(), self.labels, strict=True))}
        named_rows: Any = _named  # Ray Data's stubs type batch functions by their first argument
        return read.map_batches(named_rows, fn_kwargs=named, batch_format="pandas").select_columns(
            columns
        )

    def frame(self) -> pd.DataFrame:
        """Every file read whole, as the rows `dataset` gives (the in-memory path)."""

        def read(file: str) -> bytes:
            if "://" in file:
                filesystem, inside = pyarrow.fs.FileSystem.from_uri(file)
            else:
                filesystem, inside = pyarrow.fs.LocalFileSystem(), file
            with filesystem.open_input_stream(inside) as f:
                return f.read()

        with ThreadPoolExecutor(max_workers=8) as pool:  # object stores answer many at once
            contents = list(pool.map(read, self.files))
        keys = self._keys()
        return pd.DataFrame({"bytes": contents, "label": self.labels, "file": keys})

    def _keys(self) -> list[str]:
        return [_relative(f, self.root) for f in self.files]


def _named(frame: pd.DataFrame, root: str, labels: dict[str, str]) -> pd.DataFrame:
    files = [_relative(p, root) for p in frame["path"]]
    return pd.DataFrame(
        {"bytes": frame["bytes"], "label": [labels[f] for f in files], "file": files}
    )


def _without_scheme(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else os.path.abspath(path)


def _relative(path: str, root: str) -> str:
    return posixpath.relpath(_without_scheme(path), root)


def _manifest(filesystem: pyarrow.fs.FileSystem, file: str, root: str) -> pd.DataFrame:
    with filesystem.open_input_stream(file) as f:
        table = pd.read_csv(f, dtype={"label": str, "path": str})
    if missing := {"path", "label"} - set(table.columns):
        raise DataError(
            f"{file}: a manifest needs columns path,label; missing {', '.join(sorted(missing))}"
        )
    if table.empty:
        raise DataError(f"{file}: the manifest lists no images")
    table["path"] = [p if p.startswith("/") else posixpath.join(root, p) for p in table.path]
    return table


@dataclass
class ImageLayout:
    """Encoded images as (channels, height, width) pixels normalised per channel by the
    training images' mean and std (kiln.preprocess, as the serving replica does it)."""

    size: tuple[int, int]
    channels: int
    classes: list[str] | None = None
    normalisation: dict[str, Any] | None = None

    @property
    def columns(self) -> list[str]:
        return ["bytes", "label", "file"]

    def pixels(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, C, H, W) uint8; a file Pillow cannot read is a DataError naming it."""
        out = np.empty((len(frame), self.channels, *self.size), dtype=np.uint8)
        for row, (data, file) in enumerate(zip(frame["bytes"], frame["file"], strict=True)):
            try:
                out[row] = preprocess.decode_image(data, self.size, self.channels)
            except preprocess.ImageError as e:
                raise DataError(f"{file}: {e}") from None
        return out

    def summary(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-channel mean and M2 over the block's pixels, and the labels."""
        x = self.pixels(frame).astype(np.float64).transpose(1, 0, 2, 3).reshape(self.channels, -1)
        mean = x.mean(axis=1) if x.size else np.zeros(self.channels)
        # Per image's pixels, so that blocks merge by their image counts (stream.fit's rows).
        m2 = ((x - mean[:, None]) ** 2).sum(axis=1) / (self.size[0] * self.size[1])
        return {"mean": mean[None], "m2": m2[None], "classes": labels_of(frame, "label")}

    def fitted(self, summaries: list[dict[str, Any]]) -> "ImageLayout":
        rows, mean, m2 = merged_moments(summaries)
        rule = preprocess.normalisation(mean, np.sqrt(m2 / max(rows, 1)))
        return replace(self, classes=merged_labels(summaries), normalisation=rule)

    def tensors(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        assert self.classes is not None, "fit the layout first"
        x = preprocess.features(self.transform(), self.pixels(frame))
        labels = frame["label"].astype(str).to_numpy()
        return {"x": x, "y": class_indices(labels, self.classes, "label")}

    def transform(self) -> dict[str, Any]:
        assert self.normalisation is not None, "fit the layout first"
        image = {**self.normalisation, "size": list(self.size), "channels": self.channels}
        return {"image": image}

    def schema(self) -> DataSchema:
        assert self.classes is not None, "fit the layout first"
        shape = [self.channels, *self.size]
        return DataSchema(
            "classification",
            shape,
            "float32",
            len(self.classes),
            [str(c) for c in self.classes],
            transform=self.transform(),
        )


# (height, width); one number is a square, as torchvision's Resize reads it
Size = Annotated[
    tuple[PositiveInt, PositiveInt], BeforeValidator(lambda v: (v, v) if isinstance(v, int) else v)
]


@DATASETS.register("image_folder")
def image_folder(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str,
    size: Size = (32, 32),
    channels: Literal[1, 3] = 3,
    streaming: bool | Literal["auto"] = "auto",
    val_path: str | None = None,
) -> Dataset | StreamedDataset:
    """Your own images: a folder per class, or a CSV manifest `path,label`. Each is decoded,
    converted to `channels` (1: grey, 3: RGB) and resized to `size` (height, width; one
    number for a square); validation images are chosen by a seeded hash of their path.
    Larger sets stream."""
    require_task("image_folder", task, ("classification",))
    files = ImageFiles.open(path)
    layout = ImageLayout((int(size[0]), int(size[1])), int(channels))
    val = ImageFiles.open(val_path) if val_path else None
    if should_stream(streaming, files.bytes + (val.bytes if val else 0)):
        return stream(files, layout, val_fraction, seed, "file", val)
    val_frame = val.frame() if val else None
    return in_memory(files.frame(), layout, val_fraction, seed, "file", path, val_frame)
