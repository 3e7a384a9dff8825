"""GAN training under Ray Train: two optimizers, DDP on both networks, label smoothing, and a
quality score every epoch.

Quality: a small CNN classifier trained once on the real training images (on the driver,
cached under KILN_HOME/cache) embeds real validation images and a fixed batch of generated
ones; the Fréchet distance between the two Gaussians of its penultimate features (FID with a
domain classifier instead of Inception) falls as samples get closer to the data. We also report
the share of generated images it classifies with confidence > 0.9.

DDP: each network is wrapped on its own. The discriminator sees real and fake images in one
forward pass; fakes for its step come from the unwrapped generator without gradients, so each
DDP forward is matched by exactly one backward.
"""

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from kiln import models, plots
from kiln.data import Dataset
from kiln.metrics.generation import frechet_distance
from kiln.models.cnn import SmallCNN
from kiln.models.gan import GAN
from kiln.settings import get_settings
from kiln.spec import JobSpec, ModelSpec
from kiln.train.feed import train_loader
from kiln.train.session import WorkerSession

EVAL_SAMPLES = 1000
REAL_LABEL = 0.9  # one-sided label smoothing (Salimans et al., 2016)


def prepare(spec: JobSpec, dataset: Dataset) -> dict[str, Any]:
    return {"evaluator": evaluator_weights(dataset)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    session = WorkerSession(config)
    spec, data = session.spec, session.data
    gan = cast(GAN, session.prepare(models.create(spec.model, data.schema)))
    generator, discriminator = session.wrap(gan.generator), session.wrap(gan.discriminator)
    opt_g = session.optimizer(gan.generator, "generator")
    opt_d = session.optimizer(gan.discriminator, "discriminator", lr_scale=gan.d_lr_scale)
    # Whole batches only: the discriminator's minibatch-stddev groups must not straddle
    # real and fake images.
    loader = train_loader(data, spec.train.batch_size, session.world, drop_last=True)
    quality = Quality(config["extras"]["evaluator"], data, gan.latent_dim, session.device)
    for _ in session.epochs(loader):
        gan.train()
        sums = np.zeros(3)
        for images, _ in loader:
            real = images * 2 - 1  # [0, 1] -> the generator's [-1, 1]
            z = torch.randn(len(real), gan.latent_dim, device=session.device)
            with torch.no_grad():
                fake = gan.generator(z)
            with session.autocast():
                logits = discriminator(torch.cat([real, fake])).float()
            targets = torch.cat([torch.full((len(real),), REAL_LABEL), torch.zeros(len(fake))]).to(
                logits.device
            )
            d_loss = F.binary_cross_entropy_with_logits(logits, targets)
            session.step(d_loss, discriminator, opt_d)
            with session.autocast():
                fooled = discriminator(generator(z)).float()
            g_loss = F.binary_cross_entropy_with_logits(
                fooled, torch.ones_like(fooled)
            )  # non-saturating
            session.step(g_loss, generator, opt_g)
            sums += [d_loss.item() * len(real), g_loss.item() * len(real), len(real)]
        d_sum, g_sum, count = session.all_sum(sums.tolist())
        metrics = {"d_loss": d_sum / count, "g_loss": g_sum / count, "train_loss": g_sum / count}
        metrics |= quality.score(gan.generator)
        artifacts = (
            {"samples.png": sample_grid(gan.generator, gan.latent_dim)} if session.rank == 0 else {}
        )
        if session.end_epoch(metrics, artifacts):
            break


class Quality:
    """Every rank computes the same score: same classifier, same real images, same noise."""

    def __init__(self, evaluator: bytes, data: Dataset, latent_dim: int, device: torch.device):
        self.classifier = load_evaluator(evaluator, data)
        self.real = features_and_probs(self.classifier, torch.as_tensor(data.x_val))[0]
        self.z = torch.randn(EVAL_SAMPLES, latent_dim, generator=torch.Generator().manual_seed(0))
        self.device = device

    @torch.no_grad()
    def score(self, generator: nn.Module) -> dict[str, float]:
        generator.eval()
        images = (generator(self.z.to(self.device)).float().cpu() + 1) / 2
        generator.train()
        features, probs = features_and_probs(self.classifier, images)
        return {
            "val_fid": frechet_distance(self.real, features),
            "val_confident": float((probs.max(dim=1).values > 0.9).float().mean()),
        }


# --- the evaluation classifier ------------------------------------------------------------


def evaluator_spec() -> ModelSpec:
    return ModelSpec(family="cnn", params={"channels": [32, 64], "hidden": 64, "dropout": 0.1})


def evaluator_weights(data: Dataset, epochs: int = 15) -> bytes:
    """A classifier of the real training images: trained once per dataset, then cached."""
    cache = (
        Path(get_settings().home).expanduser()
        / "cache"
        / f"gan-evaluator-{data.fingerprint()[:16]}.safetensors"
    )
    if cache.exists():
        return cache.read_bytes()
    torch.manual_seed(0)
    model = models.create(evaluator_spec(), data.schema)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    weights = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(weights)
    return weights


def load_evaluator(weights: bytes, data: Dataset) -> SmallCNN:
    model = cast(SmallCNN, models.create(evaluator_spec(), data.schema))
    model.load_state_dict(load_safetensors(weights))
    return model.eval()


@torch.no_grad()
def features_and_probs(
    classifier: SmallCNN, images: torch.Tensor
) -> tuple[np.ndarray, torch.Tensor]:
    """Penultimate features (the hidden layer before the logits) and class probabilities."""
    hidden = classifier.head[:-1](classifier.features(images))  # (N, hidden)
    return hidden.double().numpy(), F.softmax(classifier.head[-1](hidden), dim=1)


def sample_grid(generator: nn.Module, latent_dim: int, rows: int = 8) -> bytes:
    """PNG of rows x rows samples from a fixed noise seed."""
    z = torch.randn(rows * rows, latent_dim, generator=torch.Generator().manual_seed(1))
    generator.eval()
    with torch.no_grad():
        images = (
            (generator(z.to(next(generator.parameters()).device)).float().cpu() + 1) / 2
        ).clamp(0, 1)
    generator.train()
    c, h, w = images.shape[1:]
    grid = images.view(rows, rows, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, rows * w, c)
    figure, axis = plots.subplots(figsize=(4, 4), dpi=80)
    axis.imshow(grid.squeeze(-1).numpy(), cmap="gray" if c == 1 else None, interpolation="nearest")
    axis.axis("off")
    return plots.png(figure, dpi=80, bbox_inches="tight")
