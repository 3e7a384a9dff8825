"""A speech model served from raw audio over real HTTP: every validation recording, sent as a
waveform, gets the offline model's label; WAV files and 16-bit PCM too; bad clips get 400s."""

import base64

import numpy as np
import pytest
import torch

from kiln import audio
from kiln.registry.loading import load_model
from tests.conftest import speech_corpus
from tests.serve.conftest import infer_body

pytestmark = [pytest.mark.ray, pytest.mark.slow]

URL = "/v2/models/spoken-digits-cnn"


@pytest.fixture(scope="module")
def recordings(digits_models):
    """The validation recordings (FSDD's index split: numbers 0-4) and the offline model's
    labels for them, computed outside Serve from the registered version."""
    loaded = load_model(digits_models, "spoken-digits-cnn@production")
    setup = audio.FrameSetup(**loaded.card["schema"]["transform"]["audio"]["frames"])
    files = sorted(p for p in speech_corpus().glob("*.wav") if int(p.stem.split("_")[2]) < 5)
    raw = [audio.decode_wav(p.read_bytes()) for p in files]
    clips = np.stack([audio.clip(s, rate, setup, max_seconds=30) for s, rate in raw])
    with torch.inference_mode():
        logits = loaded.module(torch.from_numpy(clips))
    classes = loaded.card["schema"]["classes"]
    offline = [classes[i] for i in logits.argmax(1).tolist()]
    return files, raw, offline


def labels(response) -> list[str]:
    assert response.status_code == 200, response.text
    return next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]


def test_every_validation_recording_gets_the_offline_label(http, recordings):
    files, raw, offline = recordings
    served = []
    for samples, rate in raw:  # one clip a request, at its own length, as a client sends it
        body = infer_body(samples[None], name="waveform")
        body["inputs"][0]["parameters"] = {"sample_rate": rate}
        served += labels(http.post(f"{URL}/infer", json=body))
    assert served == offline
    truth = [p.name.split("_")[0] for p in files]
    accuracy = np.mean(np.array(served) == np.array(truth))
    print(f"\n{len(files)} validation recordings served: accuracy {accuracy:.4f}")


def test_wav_files_and_pcm_get_the_same_labels(http, recordings):
    files, raw, offline = recordings
    some = list(range(0, len(files), max(1, len(files) // 20)))
    wavs = [base64.b64encode(files[i].read_bytes()).decode() for i in some]
    body = {"inputs": [{"name": "wav", "datatype": "BYTES", "shape": [len(wavs)], "data": wavs}]}
    assert labels(http.post(f"{URL}/infer", json=body)) == [offline[i] for i in some]
    for i in some[:5]:
        samples, rate = raw[i]
        pcm = np.round(samples * 32768).astype(np.int16)[None]
        body = infer_body(pcm, name="pcm", datatype="INT16")
        body["parameters"] = {"sample_rate": rate}  # request-level parameters count too
        assert labels(http.post(f"{URL}/infer", json=body)) == [offline[i]]


def test_another_sample_rate_is_resampled(http, recordings):
    files, raw, offline = recordings
    agree = []
    for i in range(0, len(files), max(1, len(files) // 10)):
        samples, rate = raw[i]
        doubled = audio.resample(samples, rate, 2 * rate)  # as if recorded at 16 kHz
        body = infer_body(doubled[None], name="waveform")
        body["inputs"][0]["parameters"] = {"sample_rate": 2 * rate}
        agree.append(labels(http.post(f"{URL}/infer", json=body)) == [offline[i]])
    assert np.mean(agree) >= 0.8  # resampled twice: nearly, not bit-for-bit, the same clip


def test_metadata_names_the_three_inputs(http):
    meta = http.get(URL).json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("waveform", "FP32"),
        ("pcm", "INT16"),
        ("wav", "BYTES"),
    ]


def waveform(samples: np.ndarray, rate=8000) -> dict:
    body = infer_body(samples, name="waveform")
    body["inputs"][0]["parameters"] = {"sample_rate": rate}
    return body


@pytest.mark.parametrize(
    "body, message",
    [
        (waveform(np.zeros((1, 0), np.float32)), "the clip is empty"),
        (waveform(np.zeros((1, 31 * 8000), np.float32)), "31.0 s long; at most 30 s"),
        (waveform(np.full((1, 800), 3.0, np.float32)), "outside [-1, 1]"),
        (waveform(np.zeros((1, 800), np.float32), rate=0), "not an audio rate"),
        (waveform(np.zeros((1, 800), np.float32), rate="fast"), "sample_rate must be an integer"),
        (
            {
                "inputs": [
                    {"name": "wav", "datatype": "BYTES", "shape": [1], "data": ["bm90IGF1ZGlv"]}
                ]
            },
            "not a WAV file",
        ),
        (
            {"inputs": [{"name": "wav", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]},
            "base64",
        ),
        (infer_body(np.zeros((1, 1, 8, 8), np.float32)), "this model takes 'waveform'"),
    ],
)
def test_bad_clips_get_400_saying_what_was_expected(http, body, message):
    response = http.post(f"{URL}/infer", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
