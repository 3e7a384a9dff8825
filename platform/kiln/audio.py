"""Speech signal processing, shared by training and serving so that the two cannot drift: WAV
decoding, resampling, a clip's fixed length, and log-mel features.

    frames = FrameSetup(sample_rate=8000, clip_seconds=1.0, window_ms=25, hop_ms=10, n_mels=40)
    samples, rate = decode_wav(open("7_george_3.wav", "rb").read())    # float32 in [-1, 1]
    clip = fixed_length(resample(samples, rate, frames.sample_rate), frames.samples)
    features = log_mel(torch.from_numpy(clip)[None], frames)          # (1, n_mels, frames)

scipy reads WAV files and resamples (polyphase filtering); the mel filter bank is the HTK
formula over `torch.stft`'s power spectrum (torchaudio has one, but no build for this torch).

torch is imported by the functions that use it: Ray Data's worker processes import kiln.data
(and so this module) to run Kiln's map functions, and torch would add 2-3 s to each one's start.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

LOG_FLOOR = 1e-6  # keeps the log of a silent frame finite
MAX_RATE = 384_000  # sample rates beyond this are not audio any client sends

if TYPE_CHECKING:
    import torch


class AudioError(ValueError):
    """A clip that cannot be used: not a WAV file, empty, too long, an odd sample rate."""


@dataclass(frozen=True)
class FrameSetup:
    """How a clip becomes log-mel frames: every model of a speech job sees exactly this."""

    sample_rate: int = 8000
    clip_seconds: float = 1.0  # clips are padded with silence or cropped to this, centred
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float | None = None  # default: half the sample rate

    @property
    def samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def window(self) -> int:
        return round(self.window_ms * self.sample_rate / 1000)

    @property
    def hop(self) -> int:
        return round(self.hop_ms * self.sample_rate / 1000)

    @property
    def n_fft(self) -> int:
        return 1 << (self.window - 1).bit_length()  # the next power of two

    @property
    def frames(self) -> int:
        return 1 + self.samples // self.hop  # torch.stft with center=True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A WAV file's samples as mono float32 in [-1, 1], and its sample rate."""
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():  # "chunk not understood": metadata scipy skips
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            rate, samples = wavfile.read(io.BytesIO(data))
    except (ValueError, EOFError, OSError, TypeError, IndexError, struct.error) as e:
        raise AudioError(f"not a WAV file ({str(e).strip() or type(e).__name__})") from None
    return mono(to_float(samples)), int(rate)


def to_float(samples: np.ndarray) -> np.ndarray:
    """PCM integers (8-bit unsigned, 16- or 32-bit signed) or floats as float32 in [-1, 1]."""
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128) / 128
    if samples.dtype.kind == "i":
        return samples.astype(np.float32) / float(-np.iinfo(samples.dtype).min)
    return samples.astype(np.float32)


def mono(samples: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) -> (samples,): channels averaged."""
    return samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`samples` at `rate` Hz as `target` Hz, by polyphase filtering (scipy)."""
    check_rate(rate)
    if rate == target:
        return samples
    from scipy.signal import resample_poly

    common = math.gcd(rate, target)
    return resample_poly(samples, target // common, rate // common).astype(np.float32)


def check_rate(rate: int) -> None:
    if not 0 < rate <= MAX_RATE:
        raise AudioError(f"sample rate {rate} Hz is not an audio rate (1 to {MAX_RATE} Hz)")


def fixed_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Centred in `length` samples: padded with silence on both sides, or cropped."""
    n = len(samples)
    if n >= length:
        start = (n - length) // 2
        return samples[start : start + length]
    before = (length - n) // 2
    return np.pad(samples, (before, length - n - before))


def clip(samples: np.ndarray, rate: int, setup: FrameSetup, max_seconds: float) -> np.ndarray:
    """One raw clip as a model's input: checked, resampled, fixed in length."""
    check_rate(rate)
    if samples.size == 0:
        raise AudioError("the clip is empty: send at least one sample")
    if samples.size > max_seconds * rate:
        raise AudioError(
            f"the clip is {samples.size / rate:.1f} s long; at most {max_seconds:g} s is taken"
        )
    return fixed_length(resample(samples, rate, setup.sample_rate), setup.samples)


def mel_filters(setup: FrameSetup) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels): triangular filters evenly spaced on the HTK mel scale."""
    import torch

    f_max = setup.f_max or setup.sample_rate / 2

    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + hz / 700)

    points = np.linspace(mel(np.array(setup.f_min)), mel(np.array(f_max)), setup.n_mels + 2)
    edges = 700 * (10 ** (points / 2595) - 1)  # n_mels + 2 frequencies, in Hz
    bins = np.linspace(0, setup.sample_rate / 2, setup.n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0, None)  # (n_mels, bins)
    return torch.from_numpy(weights.T.astype(np.float32))


def log_mel(
    waveforms: torch.Tensor, setup: FrameSetup, filters: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, samples) -> (B, n_mels, frames): the log of the mel-filtered power spectrum.
    `filters` (from `mel_filters`) may be passed in to skip building them on every call."""
    import torch

    if filters is None:
        filters = mel_filters(setup)
    window = torch.hann_window(setup.window, device=waveforms.device)
    spectrum = torch.stft(
        waveforms.float(),
        n_fft=setup.n_fft,
        hop_length=setup.hop,
        win_length=setup.window,
        window=window,
        center=True,
        return_complex=True,
    )  # (B, bins, frames)
    power = spectrum.real**2 + spectrum.imag**2
    mels = torch.einsum("bft,fm->bmt", power, filters.to(power.device))
    return torch.log(mels + LOG_FLOOR)


class Augmentation(BaseModel):
    """What a speech engineer does to a small corpus, drawn afresh for every clip of every
    training batch (from torch's generator, which each run seeds): the model never sees
    these at validation or in serving."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shift_s: NonNegativeFloat = Field(0.05, description="time shift, uniform in ±shift_s")
    gain_db: NonNegativeFloat = Field(6.0, description="gain, uniform in ±gain_db")
    noise_snr_db: float | None = Field(
        30.0, description="white noise at an SNR uniform in [noise_snr_db, +20 dB]; null: none"
    )
    freq_masks: NonNegativeInt = Field(1, description="SpecAugment: mel bands masked")
    freq_mask_bins: NonNegativeInt = Field(4, description="each at most this many bins wide")
    time_masks: NonNegativeInt = Field(1, description="SpecAugment: time spans masked")
    time_mask_frames: NonNegativeInt = Field(8, description="each at most this many frames")


def augment_waveforms(x: torch.Tensor, rule: Augmentation, rate: int) -> torch.Tensor:
    """(B, samples): each clip shifted in time (silence fills in), scaled and noised."""
    import torch

    batch, length = x.shape
    if rule.shift_s:
        limit = round(rule.shift_s * rate)
        shifts = torch.randint(-limit, limit + 1, (batch,)).tolist()
        x = torch.stack([_shift(row, s, length) for row, s in zip(x, shifts, strict=True)])
    if rule.gain_db:
        db = (torch.rand(batch, 1, device=x.device) * 2 - 1) * rule.gain_db
        x = x * 10 ** (db / 20)
    if rule.noise_snr_db is not None:
        snr = rule.noise_snr_db + 20 * torch.rand(batch, 1, device=x.device)
        rms = x.pow(2).mean(dim=1, keepdim=True).sqrt()
        x = x + torch.randn_like(x) * rms / 10 ** (snr / 20)
    return x


def _shift(row: torch.Tensor, by: int, length: int) -> torch.Tensor:
    import torch

    if by == 0:
        return row
    out = torch.zeros_like(row)
    if by > 0:
        out[by:] = row[: length - by]
    else:
        out[:by] = row[-by:]
    return out


def spec_augment(features: torch.Tensor, rule: Augmentation) -> torch.Tensor:
    """(B, n_mels, frames), normalised (0 is the mean): random bands and spans set to 0."""
    import torch

    features = features.clone()
    batch = features.shape[0]
    for masks, widest, axis in (
        (rule.freq_masks, rule.freq_mask_bins, 1),
        (rule.time_masks, rule.time_mask_frames, 2),
    ):
        size = features.shape[axis]
        for _ in range(masks if widest else 0):
            width = torch.randint(0, min(widest, size) + 1, (batch,))
            start = (torch.rand(batch) * (size - width + 1)).long()
            for b in range(batch):
                span = slice(int(start[b]), int(start[b] + width[b]))
                if axis == 1:
                    features[b, span, :] = 0
                else:
                    features[b, :, span] = 0
    return features
