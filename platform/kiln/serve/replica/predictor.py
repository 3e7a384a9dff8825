"""A registered model in eval mode, and the tensors it takes and gives over the protocol.

    predictor = Predictor.load(registry, registry.resolve("digits-cnn@production"))
    x = predictor.prepare_request(request)                                 # one request
    outputs = predictor.run(torch.cat([x, ...]))                           # a batch of them

Per task: classifiers give `probabilities` and `label`; generators take latent vectors (or one
seed per image), with the class of each image (`labels`) when conditional, and give `images`
in [0, 1]; regressors, forecasters and recommenders give the model's `output` (or `scores`).

Inputs are raw: the preprocessing fitted at training (`schema.transform`: standardisation, a
text vocabulary) is applied here by the training code's own functions (kiln.preprocess). A
text classifier takes `text` (BYTES, one string per example) beside its token ids; a speech
classifier takes waveforms, PCM or WAV files (kiln.serve.replica.clips).
"""

import functools
import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kiln import preprocess, tasks
from kiln.builders import import_object
from kiln.errors import RequestError
from kiln.idmaps import IdMap
from kiln.registry import REFERENCE, ModelRegistry, ModelVersion
from kiln.registry.loading import LoadedModel, load_model
from kiln.retrieval import INDEX_FILE, ItemIndex
from kiln.serve.replica import clips
from kiln.serve.replica.protocol import (
    InferenceRequest,
    TensorMetadata,
    file_bytes,
    pick_input,
    take_columns,
    take_input,
)
from kiln.settings import get_settings

# What a table model's metadata says of missing values (`parameters.missing_values`).
MISSING = "null or NaN: the feature's training mean"
MISSING_IN_COLUMNS = "null or NaN: a number's training mean; null: a text's slot for other values"


class Predictor:
    def __init__(self, loaded: LoadedModel, load_seconds: float = 0.0):
        self.name = loaded.version.name
        self.version = loaded.version.version
        self.module = loaded.module
        self.card = loaded.card
        self.schema: dict[str, Any] = loaded.card["schema"]
        self.transform: dict[str, Any] = self.schema.get("transform") or {}
        self.load_seconds = load_seconds
        self.inputs = [TensorMetadata(**t) for t in loaded.card["inputs"]]
        self.outputs = [TensorMetadata(**t) for t in loaded.card["outputs"]]
        # Per input, the values `prepare` accepts beyond its datatype's: (lowest, highest).
        self.value_bounds: list[tuple[int, int] | None] = [None] * len(self.inputs)
        # Inputs that may come beside the one of `inputs` a request sends, with their bounds.
        self.optional_inputs: list[tuple[TensorMetadata, tuple[int, int] | None]] = []
        self.notes: dict[str, Any] = {}  # what the metadata tells clients about the inputs
        # A table with text columns takes its columns as inputs, all of them in each request.
        self.columns = preprocess.table_columns(self.transform)
        if self.columns:
            self.inputs = [TensorMetadata(name=n, datatype=d, shape=[-1]) for n, d in self.columns]
            self.value_bounds = [None] * len(self.inputs)
            self.notes["inputs"] = "all"
        elif names := preprocess.input_columns(self.transform):
            self.notes["features"] = names  # the input's last axis: which column goes where
        # A table's features may be missing (null, NaN): filled as the training rows were
        # (kiln.preprocess).
        self.missing_ok = bool(self.columns) or "standardize" in self.transform
        if self.missing_ok:
            self.notes["missing_values"] = MISSING_IN_COLUMNS if self.columns else MISSING
        self.reference: np.ndarray | None = None  # training inputs, as the model takes them

    @staticmethod
    def load(registry: ModelRegistry, version: ModelVersion) -> "Predictor":
        """The predictor its task names, loaded, then run on one example: a version that
        cannot answer is refused here, before it serves anything. Raises RegistryError
        (corrupt, wrong architecture)."""
        start = time.perf_counter()
        loaded = load_model(registry, version)
        predictor = import_object(tasks.get(loaded.card["task"]).predictor)(loaded)
        predictor.run(predictor.warm_up_input())
        if REFERENCE in version.manifest["files"]:
            predictor.reference = np.load(io.BytesIO(loaded.read(REFERENCE)), allow_pickle=False)
        predictor.load_seconds = time.perf_counter() - start
        return predictor

    def warm_up_input(self) -> torch.Tensor:
        """One example as the model takes it, run once at load."""
        if self.columns:  # a row of missing values
            return self._table({name: np.array([None]) for name, _ in self.columns})
        return self.prepare(0, self.example())

    def example(self) -> np.ndarray:
        """A one-example batch of zeros in the first input's shape."""
        first = self.inputs[0]
        dtype = np.float32 if first.datatype == "FP32" else np.int64
        return np.zeros([1, *first.shape[1:]], dtype=dtype)

    def output_labels(self, output: str) -> Sequence[str] | None:
        """The names of an output's indices, where the model has them (a classifier's
        classes), for answers given as classifications."""
        return None

    @property
    def required_inputs(self) -> list[str]:
        """The inputs every request sends: a table's columns, or the one input a model takes;
        none of several alternatives (a request sends one of them), nor an optional input."""
        return [t.name for t in self.inputs] if self.columns or len(self.inputs) == 1 else []

    def prepare_request(self, request: InferenceRequest) -> torch.Tensor:
        """One request as a model input (batched with others' for `run`). Raises RequestError."""
        if self.columns:
            return self._table(take_columns(request, self.inputs))
        return self.prepare(*pick_input(request, self.inputs, self.missing_ok))

    def _table(self, columns: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(preprocess.table_rows(self.transform, columns))

    def prepare(
        self, index: int, array: np.ndarray, parameters: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """One request's input (input number `index` of `self.inputs`, with its parameters)
        as a model input. A binary request's tensor is a read-only view of the body: torch
        gets a copy of it."""
        if array.dtype == np.float32:
            array = preprocess.features(self.transform, array)
        return torch.from_numpy(np.require(array, requirements=["C", "W"]))

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        y = self.module(x).float().numpy()
        if target := self.transform.get("target"):  # trained on z-scores: back to the units
            y = y * np.float32(target["std"]) + np.float32(target["mean"])
        return {self.outputs[0].name: y}

    def drift_view(
        self, x: torch.Tensor, outputs: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """A batch's inputs and outputs as drift compares them with the training reference's
        (`run` on the reference): here, as they are."""
        return x, outputs


class Classifier(Predictor):
    def __init__(self, loaded: LoadedModel, load_seconds: float = 0.0):
        super().__init__(loaded, load_seconds)
        classes = self.schema["classes"] or [str(i) for i in range(self.schema["output_dim"])]
        self.classes = np.array(classes, dtype=object)
        width = self.schema["output_dim"]
        self.outputs = [
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, width]),
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
        ]
        if (vocab := self.schema.get("vocab_size")) and self.inputs[0].datatype == "INT64":
            self.value_bounds = [(0, vocab - 1)]
        if "vocab" in self.transform:
            self.inputs.append(TensorMetadata(name="text", datatype="BYTES", shape=[-1]))
            self.value_bounds.append(None)
        if "image" in self.transform:  # raw pixels in 0..255, or encoded image files
            self.value_bounds = [(0, 255)]
            self.inputs.append(TensorMetadata(name="image", datatype="BYTES", shape=[-1]))
            self.value_bounds.append(None)
        self.clips = (
            clips.ClipReader(self.transform["audio"]) if "audio" in self.transform else None
        )
        if self.clips:
            self.inputs, self.value_bounds = list(clips.INPUTS), list(clips.BOUNDS)

    def example(self) -> np.ndarray:
        return self.clips.example() if self.clips else super().example()

    def prepare(
        self, index: int, array: np.ndarray, parameters: dict[str, Any] | None = None
    ) -> torch.Tensor:
        name = self.inputs[index].name
        if self.clips:
            return torch.from_numpy(self.clips.read(name, array, parameters or {}))
        if name == "text":
            return torch.from_numpy(preprocess.token_ids(self.transform, _texts(array)))
        if name == "image":
            return torch.from_numpy(preprocess.features(self.transform, self._images(array)))
        if self.value_bounds[0] is not None:  # token ids, or raw pixels
            what = "pixel values" if "image" in self.transform else "token ids"
            _check_ids(array, self.value_bounds[0][1] + 1, what)
        return super().prepare(index, array)

    def _images(self, array: np.ndarray) -> np.ndarray:
        """Encoded image files as (N, C, H, W) pixels, resized as the training images were."""
        rule = self.transform["image"]
        try:
            return np.stack(
                [
                    preprocess.decode_image(
                        file_bytes(e, "image"), tuple(rule["size"]), rule["channels"]
                    )
                    for e in array.ravel()
                ]
            )
        except preprocess.ImageError as e:
            raise RequestError(f"input 'image': {e}") from None

    def output_labels(self, output: str) -> Sequence[str] | None:
        return list(self.classes) if output == "probabilities" else None

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        probabilities = torch.softmax(self.module(x).float(), dim=-1).numpy()
        return {"probabilities": probabilities, "label": self.classes[probabilities.argmax(1)]}


class Forecaster(Predictor):
    """Takes a series' last `window` values as they are and answers the next `horizon` in
    the series' units. The model learnt windows made relative to their last value and
    divided by the training series' step size (`schema.transform`, kiln.data.series): that
    is done here. A relative window ends in 0, so the prepared input carries the window's
    last value in that place, for `run` to add back to the forecasts of a batch of windows
    whatever their levels; drift compares the windows and forecasts as the model saw them."""

    def __init__(self, loaded: LoadedModel, load_seconds: float = 0.0):
        super().__init__(loaded, load_seconds)
        self.scale = np.float32(self.transform.get("scale", 1.0))
        self.relative = self.transform.get("offset") == "last_value"

    def prepare(
        self, index: int, array: np.ndarray, parameters: dict[str, Any] | None = None
    ) -> torch.Tensor:
        x = np.array(array, dtype=np.float32)  # a copy: a binary request's is read-only
        if self.relative:
            last = x[:, -1:, :].copy()
            x = (x - last) / self.scale
            x[:, -1, :] = last[:, 0, :]
        return torch.from_numpy(x)

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        relative, last = self.as_trained(x)
        y = self.module(relative).float().numpy() * self.scale
        return {self.outputs[0].name: y + last}

    def as_trained(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """The windows as the model takes them, and each one's last value (N, 1)."""
        if not self.relative:
            return x, np.zeros((len(x), 1), np.float32)
        last = x[:, -1, :1].numpy().copy()
        relative = x.clone()
        relative[:, -1, :] = 0.0
        return relative, last

    def drift_view(
        self, x: torch.Tensor, outputs: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        relative, last = self.as_trained(x)
        name = self.outputs[0].name
        return relative, {name: outputs[name] - last}


LABELS = TensorMetadata(name="labels", datatype="INT64", shape=[-1])  # a conditional generator's


class Generator(Predictor):
    """Images from latent vectors, or from seeds: seed s always draws the same image. A
    conditional generator also takes `labels`, the class of each image (one label for all of
    them, or one each); without them the class is drawn from the noise (kiln.models.gan).
    The prepared input carries the label as one more column (-1: none asked), so that
    requests with and without labels batch together."""

    def __init__(self, loaded: LoadedModel, load_seconds: float = 0.0):
        super().__init__(loaded, load_seconds)
        self.latent_dim = self.inputs[0].shape[1]
        self.inputs.append(TensorMetadata(name="seed", datatype="INT64", shape=[-1]))
        self.value_bounds = [None, (0, 2**63 - 2)]
        self.classes: int = getattr(self.module, "classes", 0)
        if self.classes:
            self.optional_inputs = [(LABELS, (0, self.classes - 1))]
            names = self.schema.get("classes") or [str(c) for c in range(self.classes)]
            self.notes = {"labels": dict(enumerate(names))}

    def prepare_request(self, request: InferenceRequest) -> torch.Tensor:
        labels, request = take_input(request, LABELS) if self.classes else (None, request)
        x = super().prepare_request(request)
        if labels is not None:
            _check_ids(labels, self.classes, "labels")
            if len(labels) not in (1, len(x)):
                raise RequestError(
                    f"send one label, or one per image ({len(x)}); got {len(labels)}"
                )
            x[:, -1] = torch.from_numpy(np.broadcast_to(labels, len(x)).astype(np.float32))
        return x

    def prepare(
        self, index: int, array: np.ndarray, parameters: dict[str, Any] | None = None
    ) -> torch.Tensor:
        if self.inputs[index].name == "latent":
            z = super().prepare(index, array)
        else:
            _check_ids(array, 2**63 - 1, "seeds")
            z = torch.stack(
                [
                    torch.randn(self.latent_dim, generator=torch.Generator().manual_seed(int(s)))
                    for s in array
                ]
            )
        if not self.classes:
            return z
        return torch.cat([z, torch.full((len(z), 1), -1.0)], dim=1)  # no label asked (yet)

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        images = self.module(x[:, :-1], x[:, -1].long()) if self.classes else self.module(x)
        images = (images.float() + 1) / 2  # the generator's [-1, 1] -> pixels in [0, 1]
        return {"images": images.clamp(0, 1).numpy()}


class Recommender(Predictor):
    """A two-tower model: raw scores over the protocol, and ranking in source ids for the
    recommendation endpoint, searched through an ItemIndex (exact, or IVF for large
    catalogues: the one stored at registration, which holds the item vectors itself); the id
    maps come from the version's Parquet files (kiln.idmaps)."""

    def __init__(self, loaded: LoadedModel, load_seconds: float = 0.0):
        super().__init__(loaded, load_seconds)
        transform = self.schema["transform"]
        self.users, self.items = _id_maps(loaded, transform)
        self.history_len = int(transform["history_len"])
        self.popular = [str(i) for i in transform["popular_items"]]
        self._loaded = loaded  # to read the stored index when asked for it
        # Documented: indices valid in every column (users, then items, per row).
        self.value_bounds = [(0, min(len(self.users) + 1, self.schema["output_dim"]) - 1)]

    def prepare(
        self, index: int, array: np.ndarray, parameters: dict[str, Any] | None = None
    ) -> torch.Tensor:
        _check_ids(array[:, :1], len(self.users) + 1, "user indices")
        _check_ids(array[:, 1:], self.schema["output_dim"], "item indices")
        return super().prepare(index, array)

    def knows(self, user_id: str) -> bool:
        return user_id in self.users

    @functools.cached_property
    def index(self) -> ItemIndex:
        """Read (or, for a small catalogue or a version registered without one, built from
        the item tower) on first use: the recommendation endpoint asks for it when a version
        loads, before it serves; the raw /v2 scores never need it."""
        exact_up_to = get_settings().exact_retrieval_up_to  # may differ from registration's
        stored = INDEX_FILE in self._loaded.version.manifest["files"]
        if stored and len(self.items) > exact_up_to:
            return ItemIndex.read(self._loaded.read(INDEX_FILE), items=len(self.items))
        with torch.inference_mode():
            vectors = self.module.item_vectors().float().numpy()  # (items + 1, D)
        return ItemIndex(vectors, exact_up_to)

    def user_vectors(self, rows: list[tuple[str, list[str]]]) -> np.ndarray:
        """(user id, recent item ids, oldest first) per row -> (rows, D) unit vectors; unknown
        users and items count as the model's "unknown" index 0 (history still speaks)."""
        x = np.zeros((len(rows), 1 + self.history_len), dtype=np.int64)
        for r, (user, recent) in enumerate(rows):
            x[r, 0] = self.users.index_of(user)
            items = [i for i in self.items.indices(recent) if i][-self.history_len :]
            if items:
                x[r, -len(items) :] = items
        with torch.inference_mode():
            return self.module.user_vectors(torch.from_numpy(x)).float().numpy()

    def top_k(
        self, vectors: np.ndarray, k: int, seen: list[set[str]]
    ) -> list[list[tuple[str, float]]]:
        """Per user vector (B, D): the k best items not in its seen ids, as (id, score)."""
        known = [{i for i in self.items.indices(ids) if i} for ids in seen]
        found = self.index.search(vectors, k, known)
        return [
            list(zip(self.items.ids_of([i for i, _ in row]), [s for _, s in row], strict=True))
            for row in found
        ]

    def popular_k(self, k: int, seen: set[str]) -> list[tuple[str, float]]:
        """Cold start: the most popular items (score: 1 / rank)."""
        ranked = [i for i in self.popular if i not in seen][:k]
        return [(item, 1.0 / (rank + 1)) for rank, item in enumerate(ranked)]


def _id_maps(loaded: LoadedModel, transform: dict[str, Any]) -> tuple[IdMap, IdMap]:
    """The version's user and item id maps: Parquet files beside the card, or (versions
    registered before kiln.idmaps) lists inside it."""
    if "item_ids" in transform:
        return IdMap(transform["user_ids"]), IdMap(transform["item_ids"])
    return (
        IdMap.from_parquet(loaded.read("users.parquet")),
        IdMap.from_parquet(loaded.read("items.parquet")),
    )


def _texts(array: np.ndarray) -> list[str]:
    """BYTES elements as text: JSON gives strings, the binary extension bytes (UTF-8)."""
    try:
        return [e.decode() if isinstance(e, bytes) else str(e) for e in array.ravel()]
    except UnicodeDecodeError:
        raise RequestError("input 'text' must be UTF-8 text") from None


def _check_ids(array: np.ndarray, bound: int, what: str) -> None:
    if array.size and (array.min() < 0 or array.max() >= bound):
        raise RequestError(f"{what} must lie in [0, {bound}); got {array.min()}..{array.max()}")
