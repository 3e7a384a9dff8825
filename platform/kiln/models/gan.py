"""DCGAN (Radford et al., 2015) sized for small images: a generator of transposed convolutions
with batch norm, and a discriminator with spectral norm (Miyato et al., 2018) that keeps its
gradients tame. `forward(z)` is the generator: what serving calls."""

import math

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from kiln.errors import SpecError
from kiln.models.base import MODELS
from kiln.schema import DataSchema

START = 2  # the generator starts from 2x2 feature maps and doubles until the image size


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, size: int, width: int):
        super().__init__()
        steps = int(math.log2(size // START))
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(latent_dim, width * START * START),
            nn.BatchNorm1d(width * START * START),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for _ in range(steps):
            blocks += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(),
            ]
            width //= 2
        blocks += [nn.Conv2d(width, channels, 3, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, C, H, W) in [-1, 1]
        return self.blocks(self.project(z).view(len(z), self.width, START, START))


class MinibatchStd(nn.Module):
    """Appends the spread of features across small groups of the batch as one more channel
    (Karras et al., 2018): a generator that collapses to one mode becomes easy to spot.
    Groups are contiguous, so a batch of [real..., fake...] never mixes the two when each
    half is a multiple of the group size."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C + 1, H, W)
        group = self.group if len(x) % self.group == 0 else 1
        spread = x.view(-1, group, *x.shape[1:]).std(dim=1, unbiased=False)  # (B/g, C, H, W)
        spread = spread.mean(dim=(1, 2, 3), keepdim=True).repeat_interleave(group, dim=0)
        return torch.cat([x, spread.expand(-1, 1, *x.shape[2:])], dim=1)


class Discriminator(nn.Module):
    def __init__(self, channels: int, size: int, width: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        while size > START:
            if size == 2 * START:  # before the last convolution
                layers.append(MinibatchStd())
                c_in += 1
            layers += [spectral_norm(nn.Conv2d(c_in, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in, width, size = width, width * 2, size // 2
        layers += [nn.Flatten(), spectral_norm(nn.Linear(c_in * START * START, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B,) logits
        return self.net(x).squeeze(1)


class GAN(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        channels: int,
        size: int,
        g_width: int,
        d_width: int,
        d_lr_scale: float,
    ):
        super().__init__()
        self.latent_dim, self.d_lr_scale = latent_dim, d_lr_scale
        self.generator = Generator(latent_dim, channels, size, g_width)
        self.discriminator = Discriminator(channels, size, d_width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


@MODELS.register("gan")
def gan(
    schema: DataSchema,
    *,
    latent_dim: PositiveInt = 32,
    g_width: PositiveInt = 128,
    d_width: PositiveInt = 64,
    d_lr_scale: PositiveFloat = 4.0,
) -> nn.Module:
    """`d_lr_scale`: the discriminator learns this many times faster than the generator
    (two time-scale updates, Heusel et al., 2017); read by the GAN training loop."""
    if len(schema.input_shape) != 3 or schema.input_shape[1] != schema.input_shape[2]:
        raise SpecError(f"gan needs square images (C, H, W); the data gives {schema.input_shape}")
    channels, size, _ = schema.input_shape
    if size < 4 or size & (size - 1):
        raise SpecError(f"gan needs an image size that is a power of two >= 4, not {size}")
    if g_width >> int(math.log2(size // START)) < 1:
        raise SpecError(f"g_width {g_width} is too small for {size}x{size} images")
    return GAN(latent_dim, channels, size, g_width, d_width, d_lr_scale)
