"""Speech clips over the Open Inference Protocol, turned into a speech model's input by the
training code's own functions (kiln.audio): decoded, resampled, centred in the clip length.
The model computes its log-mel features itself.

A speech model takes one of three inputs (`sample_rate`, a parameter of the input or of the
request, defaults to the model's own rate):

    {"name": "waveform", "datatype": "FP32",  "shape": [1, 5120], "data": [...]}   # in [-1, 1]
    {"name": "pcm",      "datatype": "INT16", "shape": [1, 5120], "data": [...]}   # 16-bit PCM
    {"name": "wav",      "datatype": "BYTES", "shape": [1], "data": ["UklGR..."]}  # WAV files

A WAV file travels as raw bytes with the binary tensor extension, or base64 in JSON (JSON
strings cannot hold bytes); its own header gives its rate.
"""

from typing import Any

import numpy as np

from kiln import audio
from kiln.errors import RequestError
from kiln.serve.replica.protocol import TensorMetadata, file_bytes

INPUTS = [
    TensorMetadata(name="waveform", datatype="FP32", shape=[-1, -1]),
    TensorMetadata(name="pcm", datatype="INT16", shape=[-1, -1]),
    TensorMetadata(name="wav", datatype="BYTES", shape=[-1]),
]
BOUNDS: list[tuple[int, int] | None] = [(-1, 1), None, None]  # FP32 samples lie in [-1, 1]


class ClipReader:
    def __init__(self, rule: dict[str, Any]):
        self.setup = audio.FrameSetup(**rule["frames"])
        self.max_seconds = float(rule.get("max_seconds", 30.0))

    def example(self) -> np.ndarray:
        return np.zeros((1, self.setup.samples), dtype=np.float32)

    def read(self, name: str, array: np.ndarray, parameters: dict[str, Any]) -> np.ndarray:
        """(clips, samples) float32 at the model's rate and length; RequestError (400) for a
        clip that is empty, too long, not audio, or at a rate that is not one."""
        try:
            if name == "wav":
                wavs = [file_bytes(e, name) for e in array.ravel()]
                return np.stack([self._clip(*audio.decode_wav(wav)) for wav in wavs])
            rate = _rate(parameters, self.setup.sample_rate)
            if name == "pcm":
                array = audio.to_float(array)
            elif np.abs(array).max(initial=0) > 1:
                raise RequestError(
                    "input 'waveform' holds samples outside [-1, 1]: send floats in [-1, 1], "
                    "or 16-bit integers as input 'pcm' (INT16)"
                )
            return np.stack([self._clip(row, rate) for row in array])
        except audio.AudioError as e:
            raise RequestError(f"input {name!r}: {e}") from None

    def _clip(self, samples: np.ndarray, rate: int) -> np.ndarray:
        return audio.clip(samples, rate, self.setup, self.max_seconds)


def _rate(parameters: dict[str, Any], default: int) -> int:
    rate = parameters.get("sample_rate", default)
    if type(rate) is float and rate.is_integer():
        rate = int(rate)
    if type(rate) is not int:
        raise RequestError(f"parameter sample_rate must be an integer (Hz); got {rate!r}")
    return rate
