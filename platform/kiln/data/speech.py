"""Labelled speech clips as waveforms of a fixed length, for models behind a log-mel front end
(kiln.models.speech). The features are computed by the model, in training and in serving
alike; what is fitted here is each mel band's mean and std over the training clips.

    data:
      name: audio
      path: ../shared/data/spoken-digits    # default: the 400 recordings Kiln ships
      params: {split: speaker, val_speakers: [nicolas], layout: image, n_mels: 40}

`path` is a folder of WAV files named `{label}_{speaker}_{index}.wav` (the Free Spoken Digit
Dataset's naming), or a CSV manifest `path,label[,speaker][,index]` with paths relative to it;
local, s3:// or gs://. Clips at another sample rate are resampled.
"""

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.fs
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from kiln import audio
from kiln.data.base import DATASETS, Dataset, require_task, shuffled_split
from kiln.data.shards import list_files
from kiln.errors import DataError
from kiln.schema import DataSchema

BUNDLED = Path(__file__).parent / "spoken_digits"  # 2 speakers x 10 digits x 20 clips (FSDD)
WAV = (".wav",)


@dataclass
class Clips:
    """A corpus as read: one row per clip."""

    waveforms: np.ndarray  # (N, samples) float32 at the setup's rate, fixed length
    labels: np.ndarray  # (N,) str
    speakers: np.ndarray  # (N,) str ("" when unknown)
    indices: np.ndarray  # (N,) int (-1 when unknown)


@DATASETS.register("audio")
def audio_clips(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str | None = None,
    split: Literal["random", "index", "speaker"] = "random",
    val_indices: NonNegativeInt = 5,
    val_speakers: list[str] | None = None,
    layout: Literal["image", "sequence"] = "image",
    sample_rate: PositiveInt = 8000,
    clip_seconds: PositiveFloat = 1.0,
    window_ms: PositiveFloat = 25.0,
    hop_ms: PositiveFloat = 10.0,
    n_mels: PositiveInt = 40,
    augment: audio.Augmentation | None = audio.Augmentation(),  # noqa: B008 (frozen)
    max_clip_seconds: PositiveFloat = 30.0,
) -> Dataset:
    """Speech clips (default: Kiln's 400 spoken digits). `split`: `random` (val_fraction,
    seed), `index` (clips numbered below `val_indices` validate: FSDD's usual split), or
    `speaker` (`val_speakers` validate: a voice the model has never heard). `layout`: image
    (1, n_mels, frames) for a CNN, sequence (frames, n_mels) for an RNN. A served clip may be
    up to `max_clip_seconds` long before it is cropped to `clip_seconds`."""
    require_task("audio", task, ("classification",))
    setup = audio.FrameSetup(sample_rate, clip_seconds, window_ms, hop_ms, n_mels)
    clips = read_clips(path or str(BUNDLED), setup)
    train, val = split_clips(clips, split, val_fraction, seed, val_indices, val_speakers)
    classes, y = np.unique(clips.labels, return_inverse=True)
    mean, std = band_statistics(clips.waveforms[train], setup)
    rule = {
        "frames": setup.to_json(),
        "layout": layout,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "augment": augment.model_dump() if augment else None,
        "max_seconds": max_clip_seconds,
    }
    schema = DataSchema(
        task="classification",
        input_shape=[setup.samples],
        input_dtype="float32",
        output_dim=len(classes),
        classes=[str(c) for c in classes],
        transform={"audio": rule},
    )
    x, y = clips.waveforms, y.astype(np.int64)
    data = Dataset(x[train], y[train], x[val], y[val], schema)
    data.baselines = {"majority_val_accuracy": float(np.bincount(y[val]).max() / len(val))}
    return data


def read_clips(path: str, setup: audio.FrameSetup) -> Clips:
    """Every clip a folder or manifest names, decoded, resampled and fixed in length."""
    filesystem, found = list_files(path, WAV + (".csv",))
    manifests = [i for i in found if i.path.lower().endswith(".csv")]
    if manifests and len(found) == 1:
        table = _manifest(filesystem, manifests[0].path)
    else:
        table = _from_names([i.path for i in found if i.path.lower().endswith(WAV)], path)

    def load(file: str) -> np.ndarray:
        try:
            with filesystem.open_input_stream(file) as f:
                samples, rate = audio.decode_wav(f.read())
            return audio.fixed_length(
                audio.resample(samples, rate, setup.sample_rate), setup.samples
            )
        except (audio.AudioError, OSError) as e:
            raise DataError(f"{file}: {e}") from None

    with ThreadPoolExecutor(max_workers=8) as pool:  # object stores answer many at once
        waveforms = np.stack(list(pool.map(load, table.path)))
    return Clips(
        waveforms.astype(np.float32),
        table.label.astype(str).to_numpy(),
        table.speaker.astype(str).to_numpy(),
        table["index"].astype(int).to_numpy(),
    )


def _from_names(files: list[str], path: str) -> pd.DataFrame:
    """Labels, speakers and indices from `{label}_{speaker}_{index}.wav` names."""
    if not files:
        raise DataError(f"no WAV files in {path}")
    rows = []
    for file in sorted(files):
        parts = posixpath.basename(file)[: -len(".wav")].split("_")
        if len(parts) != 3 or not parts[2].isdigit():
            raise DataError(
                f"{file}: expected a name {{label}}_{{speaker}}_{{index}}.wav, or give a CSV "
                "manifest (path,label[,speaker][,index]) as data.path"
            )
        rows.append((file, parts[0], parts[1], int(parts[2])))
    return pd.DataFrame(rows, columns=["path", "label", "speaker", "index"])


def _manifest(filesystem: pyarrow.fs.FileSystem, file: str) -> pd.DataFrame:
    with filesystem.open_input_stream(file) as f:
        table = pd.read_csv(f, dtype={"label": str, "speaker": str})
    if missing := {"path", "label"} - set(table.columns):
        raise DataError(
            f"{file}: a manifest needs columns path,label[,speaker][,index]; "
            f"missing {', '.join(sorted(missing))}"
        )
    if table.empty:
        raise DataError(f"{file}: the manifest lists no clips")
    folder = posixpath.dirname(file)
    table["path"] = [
        p if "://" in p or p.startswith("/") else posixpath.join(folder, p)
        for p in table.path.astype(str)
    ]
    table["speaker"] = table.get("speaker", "")
    table["index"] = table.get("index", -1)
    return table


def split_clips(
    clips: Clips,
    split: str,
    val_fraction: float,
    seed: int,
    val_indices: int,
    val_speakers: list[str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation clip numbers."""
    if split == "random":
        return shuffled_split(len(clips.labels), val_fraction, seed)
    if split == "index":
        if (clips.indices < 0).any():
            raise DataError("split: index needs clip numbers (file names or a manifest's index)")
        val = clips.indices < val_indices
    else:
        known = sorted(set(clips.speakers) - {""})
        if not val_speakers:
            raise DataError(f"split: speaker needs val_speakers; speakers: {', '.join(known)}")
        if unknown := sorted(set(val_speakers) - set(known)):
            raise DataError(f"unknown speaker {unknown[0]!r}; speakers: {', '.join(known)}")
        val = np.isin(clips.speakers, val_speakers)
    if val.all() or not val.any():
        raise DataError(
            f"split: {split} leaves no {'training' if val.all() else 'validation'} clips"
        )
    return np.flatnonzero(~val), np.flatnonzero(val)


def band_statistics(
    waveforms: np.ndarray, setup: audio.FrameSetup
) -> tuple[np.ndarray, np.ndarray]:
    """Each mel band's mean and std over every frame of the training clips (the features the
    model computes, without augmentation), a few hundred clips at a time."""
    import torch  # here: Ray Data's workers import this module and need no torch

    filters = audio.mel_filters(setup)
    total = np.zeros(setup.n_mels)
    squares = np.zeros(setup.n_mels)
    count = 0
    for start in range(0, len(waveforms), 256):
        chunk = torch.from_numpy(waveforms[start : start + 256])
        features = audio.log_mel(chunk, setup, filters).double()  # (B, n_mels, frames)
        total += features.sum(dim=(0, 2)).numpy()
        squares += (features**2).sum(dim=(0, 2)).numpy()
        count += features.shape[0] * features.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0)) + audio.LOG_FLOOR
    return mean, std
