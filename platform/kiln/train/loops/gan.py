"""GAN training under Ray Train: two optimizers, DDP on both networks, label smoothing, and a
quality score every epoch.

Quality: a small CNN classifier trained once on the real training images (on the driver,
cached under KILN_HOME/cache) embeds real validation images and a fixed batch of generated
ones; the Fréchet distance between the two Gaussians of its penultimate features (FID with a
domain classifier instead of Inception) falls as samples get closer to the data. We also report
the share of generated images it classifies with confidence > 0.9 (`val_confident`) and, for a
conditional GAN, the share it reads as the class that was asked for with confidence > 0.9
(`val_requested`, per class in the registered `quality.json`): what a user sees.

Conditional: fakes are asked for the classes of the real batch beside them; the discriminator
also learns to classify the real images, and the generator is also trained to make its images
classified as the class asked for (AC-GAN's terms).

DDP: each network is wrapped on its own. The discriminator sees real and fake images in one
forward pass; fakes for its step come from the unwrapped generator without gradients, so each
DDP forward is matched by exactly one backward.
"""

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from kiln import models, plots
from kiln.data import Dataset
from kiln.metrics.generation import frechet_distance
from kiln.models.cnn import SmallCNN
from kiln.models.gan import GAN
from kiln.settings import get_settings
from kiln.spec import JobSpec, ModelSpec
from kiln.train.feed import shared_tensor, train_loader
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
    quality = Quality(config["extras"]["evaluator"], data, gan, session.device)
    for _ in session.epochs(loader):
        gan.train()
        sums = np.zeros(3)
        for images, classes in loader:
            real = images * 2 - 1  # [0, 1] -> the generator's [-1, 1]
            labels = classes.to(session.device) if gan.classes else None
            asked = _paired(labels)
            z = torch.randn(len(real), gan.latent_dim, device=session.device)
            with torch.no_grad():
                fake = gan.generator(z, asked)
            with session.autocast():
                logits, predicted = discriminator(torch.cat([real, fake]), _cat(labels, asked))
            targets = torch.cat([torch.full((len(real),), REAL_LABEL), torch.zeros(len(fake))]).to(
                logits.device
            )
            d_loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
            if predicted is not None and labels is not None:
                d_loss = d_loss + gan.class_weight * F.cross_entropy(
                    predicted[: len(real)].float(), labels
                )
            session.step(d_loss, discriminator, opt_d)
            with session.autocast():
                made = generator(z, asked)
                fooled, predicted = discriminator(made, asked)
            # non-saturating
            g_loss = F.binary_cross_entropy_with_logits(fooled.float(), torch.ones_like(fooled))
            if predicted is not None and asked is not None:
                g_loss = g_loss + gan.class_weight * F.cross_entropy(predicted.float(), asked)
            if gan.mode_seeking:
                g_loss = g_loss + gan.mode_seeking * _sameness(made.float(), z)
            session.step(g_loss, generator, opt_g)
            if gan.average is not None:
                gan.average.update_parameters(gan.generator)
            sums += [d_loss.item() * len(real), g_loss.item() * len(real), len(real)]
        d_sum, g_sum, count = session.all_sum(sums.tolist())
        metrics = {"d_loss": d_sum / count, "g_loss": g_sum / count, "train_loss": g_sum / count}
        scores, per_class = quality.score(gan)
        artifacts = {}
        if session.rank == 0:
            artifacts["samples.png"] = sample_grid(gan)
            if per_class:
                artifacts["quality.json"] = json.dumps({"requested_by_class": per_class}).encode()
        if session.end_epoch(metrics | scores, artifacts):
            break


def _paired(labels: torch.Tensor | None) -> torch.Tensor | None:
    """The classes fakes are asked for: the real batch's first half, twice, so that fake i
    and fake i + B/2 share a class (the pairs `_sameness` compares)."""
    if labels is None:
        return None
    half = labels[: (len(labels) + 1) // 2]
    return torch.cat([half, half])[: len(labels)]


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else torch.cat([a, b])


def _sameness(images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mode seeking (Mao et al., 2019): the inverse of how far apart two images of the same
    class are for how far apart their noise is. A generator that ignores its noise (one
    image per class) has it large."""
    half = len(z) // 2
    apart = (images[:half] - images[half : 2 * half]).abs().mean()
    noise = (z[:half] - z[half : 2 * half]).abs().mean()
    return 1 / (apart / noise + 1e-5)


class Quality:
    """Every rank computes the same score: same classifier, same real images, same noise and,
    for a conditional GAN, the same classes asked for (each one as often)."""

    def __init__(self, evaluator: bytes, data: Dataset, gan: GAN, device: torch.device):
        self.classifier = load_evaluator(evaluator, data)
        self.real = features_and_probs(self.classifier, shared_tensor(data.x_val))[0]
        self.z = torch.randn(
            EVAL_SAMPLES, gan.latent_dim, generator=torch.Generator().manual_seed(0)
        ).to(device)
        self.labels = (
            torch.arange(EVAL_SAMPLES, device=device) % gan.classes if gan.classes else None
        )

    @torch.no_grad()
    def score(self, gan: GAN) -> tuple[dict[str, float], dict[str, float]]:
        """The epoch's metrics, and the requested-class share per class (conditional only)."""
        images = _draw(gan, self.z, self.labels)
        features, probs = features_and_probs(self.classifier, images)
        confidence, read = probs.max(dim=1)
        metrics = {
            "val_fid": frechet_distance(self.real, features),
            "val_confident": float((confidence > 0.9).float().mean()),
        }
        if self.labels is None:
            return metrics, {}
        asked = self.labels.cpu()
        hit = ((read == asked) & (confidence > 0.9)).float()
        metrics["val_requested"] = float(hit.mean())
        per_class = {str(c): float(hit[asked == c].mean()) for c in range(gan.classes)}
        return metrics, per_class


@torch.no_grad()
def _draw(gan: GAN, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Images in [0, 1] from the served generator in eval mode."""
    gan.eval()
    images = ((gan(z, labels).float().cpu() + 1) / 2).clamp(0, 1)
    gan.train()
    return images


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
    x, y = shared_tensor(data.x_train), shared_tensor(data.y_train)
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


def sample_grid(gan: GAN, rows: int = 8) -> bytes:
    """PNG of samples from a fixed noise seed: rows x rows, or for a conditional GAN one row
    per class (row c asks for class c)."""
    rows = gan.classes or rows
    z = torch.randn(rows * rows, gan.latent_dim, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(rows).repeat_interleave(rows) if gan.classes else None
    device = next(gan.parameters()).device
    images = _draw(gan, z.to(device), None if labels is None else labels.to(device))
    images = F.pad(images, (1, 1, 1, 1), value=0.35)  # a grey line between samples
    c, h, w = images.shape[1:]
    grid = images.view(rows, rows, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, rows * w, c)
    figure, axis = plots.subplots(figsize=(4, 4), dpi=80)
    axis.imshow(grid.squeeze(-1).numpy(), cmap="gray" if c == 1 else None, interpolation="nearest")
    axis.set_xticks([])
    if gan.classes:  # row c asks for class c
        axis.set_yticks([h * c + h / 2 - 0.5 for c in range(rows)], [str(c) for c in range(rows)])
    else:
        axis.set_yticks([])
    return plots.png(figure, dpi=80, bbox_inches="tight")
