"""Preprocessing that is fitted on the training split and stored in the model card
(`schema.transform`), then applied to raw inputs by the training data path (in memory, or in
Ray Data's `map_batches` when streamed) and by the serving predictor. There is one
implementation, so training and serving cannot drift apart.

    transform = {"standardize": standardization(mean, std, feature_names)}
    x = features(transform, raw_rows)                    # (N, F) float32, as the model saw them
    transform["categories"] = {"city": ["lyon", "paris"]}                # a table with text
    x = table_rows(transform, {"age": ages, "income": incomes, "city": cities})   # one-hot too
    ids = token_ids(transform, ["a wonderful film"])     # (N, max_len) int64, left-padded
    pixels = decode_image(png_bytes, size=(32, 32), channels=3)      # (3, 32, 32) uint8
    x = features({"image": normalisation(mean, std)}, pixels[None])  # per channel

Fitting belongs to the data layer (numpy on a split in memory, Ray Data aggregations on a
stream); what is stored here is plain JSON.
"""

import functools
import io
import math
import re
from typing import Any

import numpy as np

PAD, UNKNOWN = 0, 1  # token ids below the vocabulary's
IMAGE_MODES = {1: "L", 3: "RGB"}  # Pillow's modes by channel count
# Words of letters and digits in any script (with inner apostrophes: don't), and each Chinese
# or Japanese character on its own (those scripts put no spaces between words). A model keeps
# the pattern it was trained with (transform["tokenize"]); ASCII-only [a-z0-9']+ came first.
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(rf"[{CJK}]|[^\W_{CJK}]+(?:'[^\W_{CJK}]+)*")
EPSILON = 1e-6  # keeps a constant feature's scale finite


def standardization(mean: np.ndarray, std: np.ndarray, names: list[str]) -> dict[str, Any]:
    """What `features` needs to standardise: the training split's per-feature mean and std."""
    return {"features": names, "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist()}


def features(transform: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Raw feature rows (N, F), or raw images (N, C, H, W) with pixels in 0..255, as model
    inputs: standardised per feature or per channel when the model was trained so, otherwise
    unchanged. A standardised feature's missing value (NaN) or infinite one is its training
    mean (0 once standardised), which is how the training rows were filled."""
    if "image" in transform:
        return normalise_image(transform["image"], x)
    rule = transform.get("standardize")
    if rule is None:
        return x
    mean = np.asarray(rule["mean"], dtype=np.float32)
    scale = np.asarray(rule["std"], dtype=np.float32) + np.float32(EPSILON)
    z = ((np.asarray(x, dtype=np.float32) - mean) / scale).astype(np.float32, copy=False)
    return np.nan_to_num(z, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def table_columns(transform: dict[str, Any]) -> list[tuple[str, str]]:
    """A table with text (categorical) columns is served column by column: each column's
    name and datatype (FP32 for numbers, BYTES for text), in the model input's order. Empty
    for every other model."""
    if "categories" not in transform:
        return []
    numbers = transform.get("standardize", {}).get("features", [])
    return [(n, "FP32") for n in numbers] + [(n, "BYTES") for n in transform["categories"]]


def input_columns(transform: dict[str, Any]) -> list[str]:
    """The named raw columns a model takes, in order (a table's numbers, then its texts),
    or none where its input is not named columns (pixels, tokens, a series)."""
    numbers = transform.get("standardize", {}).get("features", [])
    return [*numbers, *transform.get("categories", {})]


def table_rows(transform: dict[str, Any], columns: dict[str, Any]) -> np.ndarray:
    """A table's raw columns (by name; numbers, texts) as model inputs (N, width): the
    numbers standardised (a missing one: its training mean), then each text column one-hot
    over the values fitted on the training rows, and a last slot for any other value (one
    the training rows lacked or kept out as rare, or none)."""
    parts = []
    if rule := transform.get("standardize"):
        numbers = [np.asarray(columns[n], dtype=np.float32) for n in rule["features"]]
        parts.append(features({"standardize": rule}, np.stack(numbers, axis=1)))
    for name, known in transform["categories"].items():
        parts.append(one_hot(columns[name], known))
    return np.concatenate(parts, axis=1)


def one_hot(column: Any, known: list[str]) -> np.ndarray:
    """(N, len(known) + 1) float32: a value's slot by its text (True is "True"), the last
    slot for any other value and for a missing one."""
    import pandas as pd

    texts = pd.Series(column, dtype=object).map(_text, na_action="ignore")
    codes = pd.Categorical(texts, categories=known).codes.astype(np.int64)
    codes[codes < 0] = len(known)
    out = np.zeros((len(codes), len(known) + 1), dtype=np.float32)
    out[np.arange(len(codes)), codes] = 1.0
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def tokenize(text: str, pattern: str = TOKEN.pattern) -> list[str]:
    return _compiled(pattern).findall(str(text).lower())


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


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
    pattern = transform["tokenize"]
    tokens = [tokenize(t, pattern) for t in texts]
    return encode(tokens, transform["vocab"], int(transform["max_len"]))


class ImageError(ValueError):
    """Bytes that are not an image Pillow can read."""


def decode_image(data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """An encoded image (PNG, JPEG, ...) as (channels, height, width) uint8: converted to grey
    or RGB and resized (bilinear) to `size` = (height, width), with Pillow. A JPEG is decoded
    at the smallest of 1/1..1/8 scale still at least `size` (Pillow's draft mode: a 12 MP photo
    for a 32x32 model in 15 ms instead of 100 ms). An image of more pixels than Pillow's
    decompression-bomb limit (89 MP) is refused before it is decoded: a small PNG can hold a
    huge plain image, and a server would decode it in full. A photo is turned upright as its
    EXIF orientation says (a phone stores its pixels as the sensor saw them), as a browser
    shows it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > (Image.MAX_IMAGE_PIXELS or math.inf):
                raise ImageError(f"{width}x{height} pixels: {_too_large()}")
            side = max(size)  # the draft is taken before turning: either side may be the height
            opened.draft(IMAGE_MODES[channels], (side, side))
            ImageOps.exif_transpose(opened, in_place=True)  # a copy otherwise, turned or not
            image = _eight_bit(opened).convert(IMAGE_MODES[channels])
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (no format Pillow reads: PNG, JPEG, GIF, ...)") from None
    except Image.DecompressionBombError:  # over twice the limit: refused as it opens
        raise ImageError(_too_large()) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"not an image ({str(e).strip() or type(e).__name__})") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


# Grey images of more than 8 bits, by Pillow's mode: the factor to 0..255. A 16-bit PNG or TIFF
# (microscopes, X-rays, scanners) opens as I;16 (or I, 32-bit, in some Pillow versions: read as
# 16-bit); a float TIFF as F, in [0, 1] by convention (scikit-image's). Pillow's own convert
# clips them at 255 instead: a 16-bit image decoded all white, a float one all black.
WIDE_GREY = {"I;16": 1 / 257, "I;16L": 1 / 257, "I;16B": 1 / 257, "I;16N": 1 / 257, "I": 1 / 257}
WIDE_GREY["F"] = 255.0


def _eight_bit(image: Any) -> Any:
    """`image`, or a grey image of more than 8 bits scaled to 8 (WIDE_GREY)."""
    from PIL import Image

    scale = WIDE_GREY.get(image.mode)
    if scale is None:
        return image
    values = np.asarray(image, dtype=np.float64) * scale
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _too_large() -> str:
    from PIL import Image

    limit = (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    return f"more than the {limit:.0f} megapixels Kiln decodes (Pillow's decompression-bomb limit)"


def normalisation(mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """What `normalise_image` needs: each channel's mean and std of the training pixels."""
    return {"mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist()}


def normalise_image(rule: dict[str, Any], pixels: np.ndarray) -> np.ndarray:
    """(N, C, H, W) raw pixels in 0..255 -> float32 standardised per channel."""
    mean = np.asarray(rule["mean"], dtype=np.float32)[:, None, None]
    scale = np.asarray(rule["std"], dtype=np.float32)[:, None, None] + np.float32(EPSILON)
    return ((np.asarray(pixels, dtype=np.float32) - mean) / scale).astype(np.float32, copy=False)
