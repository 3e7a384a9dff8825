"""The registered model families: what a spec's `model.params` may say for each, and how the
network is built from them and the data's schema.

The networks live in their own modules (kiln.models.cnn, ...), imported when a builder runs:
checking a spec against these signatures (`kiln validate`, and every command before Ray starts)
imports no torch, which took 1.1 s of `kiln train`'s start before Ray could begin its own.
"""

import math
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, confloat

from kiln.errors import SpecError
from kiln.models.base import MODELS
from kiln.schema import DataSchema

if TYPE_CHECKING:
    from torch import nn


@MODELS.register("mlp")
def mlp(
    schema: DataSchema,
    *,
    hidden: tuple[int, ...] = (128, 64),
    dropout: confloat(ge=0, lt=1) = 0.1,  # type: ignore[valid-type]
    activation: Literal["relu", "gelu", "tanh"] = "relu",
) -> "nn.Module":
    from kiln.models.mlp import MLP

    if schema.input_dtype != "float32":
        raise SpecError("mlp needs float features; this data gives token ids (use rnn)")
    in_features = math.prod(schema.input_shape)
    return MLP(in_features, tuple(hidden), schema.output_dim, dropout, activation)


@MODELS.register("cnn")
def cnn(
    schema: DataSchema,
    *,
    channels: tuple[PositiveInt, ...] = (32, 64),
    kernel_size: PositiveInt = 3,
    hidden: PositiveInt = 128,
    dropout: confloat(ge=0, lt=1) = 0.2,  # type: ignore[valid-type]
) -> "nn.Module":
    from kiln.models.cnn import SmallCNN

    if len(schema.input_shape) != 3:
        raise SpecError(f"cnn needs images (C, H, W); the data gives shape {schema.input_shape}")
    c, h, w = schema.input_shape
    return SmallCNN(c, min(h, w), tuple(channels), kernel_size, hidden, dropout, schema.output_dim)


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
) -> "nn.Module":
    from kiln.models.rnn import SequenceRNN

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


@MODELS.register("gan")
def gan(
    schema: DataSchema,
    *,
    latent_dim: PositiveInt = 32,
    g_width: PositiveInt = 128,
    d_width: PositiveInt = 64,
    d_lr_scale: PositiveFloat = 4.0,
    conditional: bool = False,
    class_weight: Annotated[float, Field(ge=0)] = 1.0,
    mode_seeking: Annotated[float, Field(ge=0)] = 0.0,
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> "nn.Module":
    """`d_lr_scale`: the discriminator learns this many times faster than the generator
    (two time-scale updates, Heusel et al., 2017); read by the GAN training loop.
    `conditional`: generate the class asked for (the data's classes). `ema_decay`: serve a
    moving average of the generator's weights (0: the weights as trained)."""
    from kiln.models.gan import GAN, START

    if schema.task != "generation":
        raise SpecError(f"gan generates images (task: generation), not {schema.task}")
    if len(schema.input_shape) != 3 or schema.input_shape[1] != schema.input_shape[2]:
        raise SpecError(f"gan needs square images (C, H, W); the data gives {schema.input_shape}")
    channels, size, _ = schema.input_shape
    if size < 4 or size & (size - 1):
        raise SpecError(f"gan needs an image size that is a power of two >= 4, not {size}")
    if g_width >> int(math.log2(size // START)) < 1:
        raise SpecError(f"g_width {g_width} is too small for {size}x{size} images")
    classes = schema.output_dim if conditional else 0
    if conditional and latent_dim < classes:
        raise SpecError(f"a conditional gan needs latent_dim >= its {classes} classes")
    return GAN(
        latent_dim,
        channels,
        size,
        g_width,
        d_width,
        d_lr_scale,
        classes,
        ema_decay,
        class_weight,
        mode_seeking,
    )


@MODELS.register("sequential")
def sequential(
    schema: DataSchema,
    *,
    dim: PositiveInt = 64,
    layers: PositiveInt = 2,
    heads: PositiveInt = 2,
    dropout: confloat(ge=0, lt=1) = 0.2,  # type: ignore[valid-type]
    temperature: PositiveFloat = 0.1,
    loss: Literal["sampled_softmax", "bpr"] = "sampled_softmax",
    negatives: Literal["in_batch", "sampled"] = "in_batch",
    num_negatives: PositiveInt = 256,
) -> "nn.Module":
    """`loss`, `negatives` and `num_negatives` are read by the recommendation training loop."""
    from kiln.models.sequential import SequentialRecommender

    if schema.task != "recommendation" or not schema.vocab_size:
        raise SpecError("sequential needs interaction data (task: recommendation)")
    if dim % heads:
        raise SpecError(f"sequential: dim {dim} must be a multiple of heads {heads}")
    return SequentialRecommender(
        schema.vocab_size,
        schema.input_shape[0] - 1,
        dim,
        layers,
        heads,
        dropout,
        temperature,
        loss,
        negatives,
        num_negatives,
    )


@MODELS.register("two_tower")
def two_tower(
    schema: DataSchema,
    *,
    dim: PositiveInt = 64,
    hidden: PositiveInt = 128,
    pooling: Literal["mean", "attention"] = "attention",
    use_user_id: bool = True,
    user_id_dropout: confloat(ge=0, lt=1) = 0.2,  # type: ignore[valid-type]
    temperature: PositiveFloat = 0.1,
    loss: Literal["sampled_softmax", "bpr"] = "sampled_softmax",
    negatives: Literal["in_batch", "sampled"] = "in_batch",
    num_negatives: PositiveInt = 256,
) -> "nn.Module":
    """`loss`, `negatives` and `num_negatives` are read by the recommendation training loop."""
    from kiln.models.two_tower import TwoTower

    if schema.task != "recommendation" or not schema.vocab_size:
        raise SpecError("two_tower needs interaction data (task: recommendation)")
    transform = schema.transform  # versions registered before kiln.idmaps list the user ids
    num_users = transform.get("num_users") or len(transform["user_ids"]) + 1
    return TwoTower(
        num_users,
        schema.vocab_size,
        schema.input_shape[0] - 1,
        dim,
        hidden,
        pooling,
        use_user_id,
        user_id_dropout,
        temperature,
        loss,
        negatives,
        num_negatives,
    )
