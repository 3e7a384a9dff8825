"""Speech data without Ray: WAV decoding, resampling, fixed length, log-mel features, the
folder and manifest readers, the splits, and bad clips refused by name."""

import io
import wave

import numpy as np
import pytest
import torch

from kiln import audio, data
from kiln.data.speech import BUNDLED, read_clips
from kiln.errors import DataError
from kiln.spec import DataSpec
from tests.conftest import speech_corpus

SETUP = audio.FrameSetup()


def wav_bytes(samples: np.ndarray, rate: int = 8000, width: int = 2) -> bytes:
    """A real WAV file, written by Python's own wave module (not by the code under test)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(samples.astype({1: np.uint8, 2: np.int16, 4: np.int32}[width]).tobytes())
    return buffer.getvalue()


def test_decode_any_pcm_width_and_channels_to_mono_floats():
    tone = (np.sin(np.arange(800) / 5) * 16000).astype(np.int16)
    samples, rate = audio.decode_wav(wav_bytes(tone))
    assert rate == 8000 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, tone / 32768, atol=1e-7)
    stereo = np.stack([tone, tone // 2], axis=1)
    left_right, _ = audio.decode_wav(wav_bytes(stereo))
    np.testing.assert_allclose(left_right, (tone + tone // 2) / 2 / 32768, atol=1e-6)
    eight_bit, _ = audio.decode_wav(wav_bytes((tone // 256 + 128).astype(np.uint8), width=1))
    assert np.abs(eight_bit - tone / 32768).max() < 0.01


@pytest.mark.parametrize("data", [b"", b"RIFF", b"not audio at all", b"\x00" * 100])
def test_what_is_not_a_wav_file_says_so(data):
    with pytest.raises(audio.AudioError, match="not a WAV file"):
        audio.decode_wav(data)


def test_resampling_keeps_a_tone_at_its_frequency():
    seconds, hz = 0.5, 440
    tone = np.sin(2 * np.pi * hz * np.arange(int(16000 * seconds)) / 16000).astype(np.float32)
    down = audio.resample(tone, 16000, 8000)
    assert len(down) == 4000
    spectrum = np.abs(np.fft.rfft(down))
    assert abs(spectrum.argmax() * 8000 / len(down) - hz) < 3
    with pytest.raises(audio.AudioError, match="not an audio rate"):
        audio.resample(tone, 0, 8000)


def test_fixed_length_centres_pads_and_crops():
    np.testing.assert_array_equal(audio.fixed_length(np.ones(4), 8), [0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(audio.fixed_length(np.arange(10.0), 4), [3, 4, 5, 6])


def test_clip_refuses_empty_and_overlong_clips():
    with pytest.raises(audio.AudioError, match="empty"):
        audio.clip(np.zeros(0, np.float32), 8000, SETUP, max_seconds=30)
    with pytest.raises(audio.AudioError, match="31.0 s long; at most 30 s"):
        audio.clip(np.zeros(31 * 8000, np.float32), 8000, SETUP, max_seconds=30)
    assert audio.clip(np.zeros(16000, np.float32), 16000, SETUP, 30).shape == (SETUP.samples,)


def test_log_mel_puts_a_tone_in_its_band():
    setup = audio.FrameSetup(n_mels=40)
    low, high = (
        torch.sin(2 * torch.pi * hz * torch.arange(8000) / 8000)[None] for hz in (300, 3000)
    )
    features = audio.log_mel(torch.cat([low, high]), setup)
    assert features.shape == (2, 40, setup.frames) == (2, 40, 101)
    loudest = features.mean(dim=2).argmax(dim=1)
    assert loudest[0] < loudest[1]  # 300 Hz in a lower band than 3 kHz
    filters = audio.mel_filters(setup)
    assert filters.shape == (setup.n_fft // 2 + 1, 40) and (filters.sum(dim=0) > 0).all()


def test_augmentation_is_seeded_and_keeps_shapes():
    rule = audio.Augmentation()
    x = torch.randn(4, 8000) * 0.1
    torch.manual_seed(3)
    a = audio.augment_waveforms(x, rule, 8000)
    torch.manual_seed(3)
    b = audio.augment_waveforms(x, rule, 8000)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    features = torch.randn(4, 40, 101)
    masked = audio.spec_augment(features, audio.Augmentation(freq_mask_bins=40, time_masks=0))
    assert (masked == 0).any() and masked.shape == features.shape


# --- the dataset --------------------------------------------------------------------------


def build(path=None, **params):
    spec = DataSpec(name="audio", path=None if path is None else str(path), params=params)
    data.check(spec)
    return data.build(spec, "classification")


def test_the_bundled_recordings_split_by_index():
    built = build(split="index")
    assert built.x_train.shape == (300, 8000) and built.x_val.shape == (100, 8000)
    assert built.schema.classes == [str(d) for d in range(10)]
    rule = built.schema.transform["audio"]
    assert rule["frames"]["n_mels"] == 40 and len(rule["mean"]) == 40
    attribution = " ".join((BUNDLED / "README.md").read_text().split())
    assert "Free Spoken Digit Dataset" in attribution
    assert "Creative Commons Attribution-ShareAlike 4.0" in attribution


def test_speaker_split_holds_out_a_voice():
    built = build(split="speaker", val_speakers=["nicolas"])
    assert len(built.x_val) == 200 and len(built.x_train) == 200
    with pytest.raises(DataError, match="unknown speaker 'alice'; speakers: george, nicolas"):
        build(split="speaker", val_speakers=["alice"])
    with pytest.raises(DataError, match="needs val_speakers"):
        build(split="speaker")


def test_a_manifest_names_clips_anywhere_at_any_rate(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,label,speaker"]
    for i in range(12):
        label = "yes" if i % 2 else "no"
        tone = np.sin(np.arange(12000) * (0.05 if i % 2 else 0.3)) * 8000 * rng.uniform(0.5, 1)
        (tmp_path / f"clip{i}.wav").write_bytes(wav_bytes(tone, rate=16000))
        rows.append(f"clip{i}.wav,{label},s{i % 3}")
    (tmp_path / "clips.csv").write_text("\n".join(rows))
    built = build(tmp_path / "clips.csv", split="speaker", val_speakers=["s0"])
    assert built.schema.classes == ["no", "yes"]
    assert built.x_train.shape == (8, 8000)  # 0.75 s at 16 kHz -> centred in 1 s at 8 kHz
    with pytest.raises(DataError, match="needs clip numbers"):
        build(tmp_path / "clips.csv", split="index")


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no WAV files in"),
        ({"seven.wav": b"x"}, r"seven\.wav: expected a name \{label\}_\{speaker\}_\{index\}\.wav"),
        ({"7_ann_0.wav": b"garbage"}, r"7_ann_0\.wav: not a WAV file"),
    ],
)
def test_bad_folders_are_refused_naming_the_file(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        build(tmp_path)


def test_a_missing_path_is_refused_before_reading(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        build(tmp_path / "nowhere")


def test_the_shared_corpus_when_it_is_there():
    corpus = speech_corpus()
    clips = read_clips(str(corpus), SETUP)
    speakers = sorted(set(clips.speakers))
    full = corpus != BUNDLED
    assert len(clips.labels) == (2500 if full else 400)
    assert len(speakers) == (5 if full else 2)
