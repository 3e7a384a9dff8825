"""Convolutional network for image classification, sized for small images (8x8 to 64x64).

Each stage is conv-BN-ReLU twice, then 2x2 max-pooling while the image is larger than 2x2;
a global average pool makes the head independent of the input size."""

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        size: int,
        channels: tuple[int, ...],
        kernel: int,
        hidden: int,
        dropout: float,
        num_classes: int,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            layers += conv_block(c_in, c_out, kernel) + conv_block(c_out, c_out, kernel)
            if size > 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        self.features: nn.Sequential = nn.Sequential(*layers)
        self.head: nn.Sequential = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.features(x))
