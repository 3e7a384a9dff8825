"""Recurrent networks (LSTM or GRU) over sequences: rows of an image, windows of a time series,
token ids of a text (then with an embedding), or log-mel frames of speech. The last step's
output (`pooling: last`) or the mean over all steps (`pooling: mean`, for speech, whose clips end in
silence) feeds the head, which classifies or forecasts `output_dim` values."""

import torch
from torch import nn


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
