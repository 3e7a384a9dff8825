"""DCGAN (Radford et al., 2015) sized for small images: a generator of transposed convolutions
with batch norm, and a discriminator with spectral norm (Miyato et al., 2018) that keeps its
gradients tame. `forward(z, labels)` is the generator: what serving calls.

Class-conditional (`conditional: true`): the generator takes a label embedding beside the
noise; the discriminator scores the pair by projection (Miyato & Koyama, 2018) and also
classifies real and generated images (an auxiliary classifier, Odena et al., 2017), which
pushes each sample to read as the class it was asked for. `ema_decay` keeps an exponential
moving average of the generator's weights (Karras et al., 2018), the one that is served.
"""

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

START = 2  # the generator starts from 2x2 feature maps and doubles until the image size


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, size: int, width: int, classes: int = 0):
        super().__init__()
        steps = int(math.log2(size // START))
        self.width = width
        self.embed = nn.Embedding(classes, latent_dim) if classes else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim * (2 if classes else 1), width * START * START),
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

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent) and, when conditional, (B,) class indices -> (B, C, H, W) in [-1, 1]."""
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        # unflatten, not view(len(z), ...): an exported generator takes any batch size
        return self.blocks(self.project(z).unflatten(1, (self.width, START, START)))


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
    """Real-or-fake logits, and with `classes` the class logits of an auxiliary classifier;
    the pair's logit adds the projection of the label's embedding on the image's features."""

    def __init__(self, channels: int, size: int, width: int, classes: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        while size > START:
            if size == 2 * START:  # before the last convolution
                layers.append(MinibatchStd())
                c_in += 1
            layers += [spectral_norm(nn.Conv2d(c_in, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in, width, size = width, width * 2, size // 2
        features = c_in * START * START
        layers += [nn.Flatten(), spectral_norm(nn.Linear(features, 1))]
        self.net = nn.Sequential(*layers)
        self.embed = spectral_norm(nn.Embedding(classes, features)) if classes else None
        self.classify = spectral_norm(nn.Linear(features, classes)) if classes else None

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W) [and (B,) labels] -> (B,) logits, (B, classes) class logits or None."""
        if self.embed is None or self.classify is None:
            return self.net(x).squeeze(1), None
        features = self.net[:-1](x)
        logits = self.net[-1](features).squeeze(1) + (self.embed(labels) * features).sum(1)
        return logits, self.classify(features)


class GAN(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        channels: int,
        size: int,
        g_width: int,
        d_width: int,
        d_lr_scale: float,
        classes: int = 0,
        ema_decay: float = 0.0,
        class_weight: float = 1.0,
        mode_seeking: float = 0.0,
    ):
        super().__init__()
        self.latent_dim, self.d_lr_scale, self.classes = latent_dim, d_lr_scale, classes
        self.class_weight, self.mode_seeking = class_weight, mode_seeking  # read by the loop
        self.generator = Generator(latent_dim, channels, size, g_width, classes)
        self.discriminator = Discriminator(channels, size, d_width, classes)
        self.average = (
            AveragedModel(
                self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
            )
            if ema_decay
            else None
        )

    @property
    def served(self) -> nn.Module:
        """The generator that samples: the moving average of its weights, when kept."""
        return self.average.module if self.average is not None else self.generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Where no label is given (None, or -1), a conditional generator draws the class from
        the noise itself: the largest of its first `classes` values, uniform over classes,
        so the same noise always gives the same image."""
        if not self.classes:
            return self.served(z)
        drawn = z[:, : self.classes].argmax(dim=1)
        labels = drawn if labels is None else torch.where(labels < 0, drawn, labels)
        return self.served(z, labels)
