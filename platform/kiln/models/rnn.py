"""Recurrent networks (LSTM or GRU) over sequences: rows of an image, windows of a time series,
token ids of a text (then with an embedding), or log-mel frames of speech. The last step's
output (`pooling: last`) or the mean over all steps (`pooling: mean`, for speech, whose clips end in
silence) feeds the head, which classifies or forecasts `output_dim` values."""

from typing import Literal

import torch
from pydantic import PositiveInt, confloat
from torch import nn

from kiln.errors import SpecError
from kiln.models.base import MODELS
from kiln.schema import DataSchema


class SequenceRNN(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        cell: str,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        vocab_size: int | None,
        embed_dim: int,
        pooling: str = "last",
    ):
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size else None
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            embed_dim if vocab_size else in_features,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        width = hidden * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) or (B, T) ids -> (B, out)
        if self.embed is not None:
            x = self.embed(x)  # (B, T, E)
        out, _ = self.rnn(x)  # (B, T, H * directions)
        return self.head(out.mean(dim=1) if self.pooling == "mean" else out[:, -1])


@MODELS.register("rnn")
def rnn(
    schema: DataSchema,
    *,
    cell: Literal["lstm", "gru"] = "lstm",
    hidden: PositiveInt = 64,
    layers: PositiveInt = 1,
    bidirectional: bool = False,
    dropout: confloat(ge=0, lt=1) = 0.0,  # type: ignore[valid-type]
    embed_dim: PositiveInt = 64,
    pooling: Literal["last", "mean"] = "last",
) -> nn.Module:
    tokens = schema.input_dtype == "int64"
    if tokens and not schema.vocab_size:
        raise SpecError("rnn over token ids needs a dataset with a vocabulary")
    if not tokens and len(schema.input_shape) != 2:
        raise SpecError(f"rnn needs sequences (T, F); the data gives shape {schema.input_shape}")
    in_features = 0 if tokens else schema.input_shape[-1]
    return SequenceRNN(
        in_features,
        schema.output_dim,
        cell,
        hidden,
        layers,
        bidirectional,
        dropout,
        schema.vocab_size if tokens else None,
        embed_dim,
        pooling,
    )
