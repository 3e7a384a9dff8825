"""Preprocessing that is fitted on the training split and stored in the model card
(`schema.transform`), then applied to raw inputs by the training data path (in memory, or in
Ray Data's `map_batches` when streamed) and by the serving predictor. There is one
implementation, so training and serving cannot drift apart.

    transform = {"standardize": standardization(mean, std, feature_names)}
    x = features(transform, raw_rows)                    # (N, F) float32, as the model saw them
    ids = token_ids(transform, ["a wonderful film"])     # (N, max_len) int64, left-padded

Fitting belongs to the data layer (numpy on a split in memory, Ray Data aggregations on a
stream); what is stored here is plain JSON.
"""

import re
from typing import Any

import numpy as np

PAD, UNKNOWN = 0, 1  # token ids below the vocabulary's
TOKEN = re.compile(r"[a-z0-9']+")
EPSILON = 1e-6  # keeps a constant feature's scale finite


def standardization(mean: np.ndarray, std: np.ndarray, names: list[str]) -> dict[str, Any]:
    """What `features` needs to standardise: the training split's per-feature mean and std."""
    return {"features": names, "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist()}


def features(transform: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Raw feature rows (N, F) as model inputs: standardised when the model was trained so,
    otherwise unchanged."""
    rule = transform.get("standardize")
    if rule is None:
        return x
    mean = np.asarray(rule["mean"], dtype=np.float32)
    scale = np.asarray(rule["std"], dtype=np.float32) + np.float32(EPSILON)
    return ((np.asarray(x, dtype=np.float32) - mean) / scale).astype(np.float32, copy=False)


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(str(text).lower())


def encode(texts: list[list[str]], vocab: dict[str, int], max_len: int) -> np.ndarray:
    """Token lists as ids, the last `max_len` of each, padded on the left so that an RNN's
    last step is the text's last word."""
    out = np.full((len(texts), max_len), PAD, np.int64)
    for row, words in enumerate(texts):
        ids = [vocab.get(w, UNKNOWN) for w in words][-max_len:]
        if ids:
            out[row, -len(ids) :] = ids
    return out


def token_ids(transform: dict[str, Any], texts: list[str]) -> np.ndarray:
    """Raw texts as the token ids of the vocabulary fitted at training."""
    return encode([tokenize(t) for t in texts], transform["vocab"], int(transform["max_len"]))
