"""Speech models: a registered family's network behind a log-mel front end, so that a model
takes waveforms and training, validation and serving compute its features with the same
code (kiln.audio).

    SpeechModel(front=LogMelFrontEnd(audio), body=cnn(schema_of_the_features))
    model(waveforms)     # (B, samples) at the setup's rate -> (B, classes)

A dataset that gives waveforms says so in its schema (`transform["audio"]`: the frame setup,
the training split's per-band mean and std, the layout, the augmentation); `kiln.models.create`
then wraps whatever family the spec names. Augmentation runs only in training mode.
"""

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from kiln import audio
from kiln.schema import DataSchema


class LogMelFrontEnd(nn.Module):
    """(B, samples) -> log-mel features normalised by the training split's statistics, laid
    out as an image (B, 1, n_mels, frames) or a sequence (B, frames, n_mels)."""

    filters: torch.Tensor  # buffers
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, rule: dict[str, Any]):
        super().__init__()
        self.setup = audio.FrameSetup(**rule["frames"])
        self.layout = rule["layout"]
        augment = rule.get("augment")
        self.augment = audio.Augmentation(**augment) if augment else None
        # Derived from the card, not learnt: kept out of the state dict.
        self.register_buffer("filters", audio.mel_filters(self.setup), persistent=False)
        mean, std = (torch.tensor(rule[k], dtype=torch.float32)[:, None] for k in ("mean", "std"))
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        augment = self.augment if self.training else None
        if augment is not None:
            waveforms = audio.augment_waveforms(waveforms, augment, self.setup.sample_rate)
        features = (audio.log_mel(waveforms, self.setup, self.filters) - self.mean) / self.std
        if augment is not None:
            features = audio.spec_augment(features, augment)
        if self.layout == "sequence":
            return features.transpose(1, 2)  # (B, frames, n_mels)
        return features[:, None]  # (B, 1, n_mels, frames)


class SpeechModel(nn.Module):
    def __init__(self, front: LogMelFrontEnd, body: nn.Module):
        super().__init__()
        self.front, self.body = front, body

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:  # (B, samples) -> (B, out)
        return self.body(self.front(waveforms))


def feature_schema(schema: DataSchema) -> DataSchema:
    """The schema the body is built for: its input is the front end's output, not a waveform."""
    rule = schema.transform["audio"]
    setup = audio.FrameSetup(**rule["frames"])
    if rule["layout"] == "sequence":
        shape = [setup.frames, setup.n_mels]
    else:
        shape = [1, setup.n_mels, setup.frames]
    return replace(schema, input_shape=shape, input_dtype="float32", transform={})


def wrap(schema: DataSchema, body: nn.Module) -> nn.Module:
    return SpeechModel(LogMelFrontEnd(schema.transform["audio"]), body)
