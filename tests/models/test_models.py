"""Forward and backward shapes for every registered family, on every input it accepts."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln import models
from kiln.errors import SpecError
from kiln.schema import DataSchema
from kiln.spec import ModelSpec

INPUTS = {
    "image": DataSchema("classification", [1, 8, 8], "float32", output_dim=10),
    "images to draw": DataSchema("generation", [1, 8, 8], "float32", output_dim=10),
    "sequence": DataSchema("forecasting", [24, 1], "float32", output_dim=3),
    "tokens": DataSchema("classification", [16], "int64", output_dim=2, vocab_size=50),
    "table": DataSchema("classification", [30], "float32", output_dim=2),
    "interactions": DataSchema(
        "recommendation",
        [1 + 5],
        "int64",
        output_dim=40,
        vocab_size=40,
        transform={"num_users": 11},
    ),
}


def example(schema: DataSchema, batch: int = 4) -> torch.Tensor:
    if schema.input_dtype == "int64":
        ids = torch.randint(0, schema.vocab_size, (batch, *schema.input_shape))
        if schema.task == "recommendation":  # column 0 is a user index, the rest items
            ids[:, 0] = torch.randint(0, schema.transform["num_users"], (batch,))
        return ids
    return torch.randn(batch, *schema.input_shape)


@pytest.mark.parametrize("family", models.list_models())
@pytest.mark.parametrize("kind", list(INPUTS))
def test_forward_backward(family, kind):
    schema = INPUTS[kind]
    try:
        model = models.create(ModelSpec(family=family), schema)
    except SpecError as e:
        pytest.skip(f"{family} does not take {kind} inputs: {e}")
    latent = getattr(model, "latent_dim", None)  # a generator maps noise to data
    out = model(torch.randn(4, latent) if latent else example(schema))
    assert out.shape == ((4, *schema.input_shape) if latent else (4, schema.output_dim))
    out.float().pow(2).mean().backward()
    trained = model.generator if latent else model
    grads = [p.grad for p in trained.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", models.list_models())
def test_every_family_takes_some_input(family):
    accepted = []
    for kind, schema in INPUTS.items():
        try:
            models.create(ModelSpec(family=family), schema)
            accepted.append(kind)
        except SpecError:
            pass
    assert accepted


def test_gan_discriminator_scores_images():
    gan = models.create(ModelSpec(family="gan"), INPUTS["images to draw"])
    images = gan(torch.randn(8, gan.latent_dim))
    assert images.shape == (8, 1, 8, 8) and images.abs().max() <= 1
    logits, classes = gan.discriminator(torch.cat([images, images]))
    assert logits.shape == (16,) and classes is None


def test_conditional_gan_draws_the_class_asked_for_or_one_from_the_noise():
    params = {"conditional": True, "ema_decay": 0.9}
    gan = models.create(ModelSpec(family="gan", params=params), INPUTS["images to draw"]).eval()
    z = torch.randn(6, gan.latent_dim)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    images = gan(z, labels)
    assert images.shape == (6, 1, 8, 8)
    assert not torch.allclose(gan(z, labels), gan(z, labels.flip(0)))  # the label steers
    drawn = z[:, :10].argmax(1)  # no label (None, or -1 per image): the noise chooses
    torch.testing.assert_close(gan(z), gan(z, drawn))
    torch.testing.assert_close(gan(z, torch.full((6,), -1)), gan(z, drawn))
    logits, classes = gan.discriminator(images, labels)
    assert logits.shape == (6,) and classes.shape == (6, 10)
    # the moving average starts as the generator, and is what draws
    gan.average.update_parameters(gan.generator)
    with torch.no_grad():
        gan.generator.project[0].weight.add_(1.0)
    torch.testing.assert_close(gan(z, labels), images)


def test_conditional_gan_needs_noise_wide_enough_to_draw_a_class():
    with pytest.raises(SpecError, match="latent_dim"):
        models.create(
            ModelSpec(family="gan", params={"conditional": True, "latent_dim": 8}),
            INPUTS["images to draw"],
        )


def test_an_unconditional_gan_keeps_the_weight_names_registered_versions_have():
    gan = models.create(ModelSpec(family="gan"), INPUTS["images to draw"])
    names = set(gan.state_dict())
    assert not any(
        n.startswith(("average.", "generator.embed", "discriminator.embed")) for n in names
    )
    assert "discriminator.net.6.parametrizations.weight.original" in names


def test_params_are_checked_against_the_builder():
    with pytest.raises(Exception, match="dropout"):
        models.check(ModelSpec(family="mlp", params={"dropout": "high"}))


def test_users_own_model_by_import_path():
    spec = ModelSpec.model_validate({"import": "tests.models.custom:tiny", "params": {"width": 8}})
    models.check(spec)
    model = models.create(spec, INPUTS["table"])
    assert model(example(INPUTS["table"])).shape == (4, 2)


def test_a_lazy_builder_is_sized_by_an_example_before_training():
    """DDP and the optimizers refuse uninitialised parameters (PyTorch asks for a dummy
    forward pass first); `create` gives the network sized for its data."""
    from torch.nn.parameter import is_lazy

    spec = ModelSpec.model_validate({"import": "tests.models.custom:lazy"})
    model = models.create(spec, INPUTS["image"])
    assert not any(is_lazy(t) for t in (*model.parameters(), *model.buffers()))
    assert model.training
    assert model(example(INPUTS["image"])).shape == (4, 10)


@pytest.mark.parametrize(
    ("builder", "says"),
    [
        (
            "sized_for_other_data",
            r"does not fit the data \(input shape \[30\], float32\): "
            r"RuntimeError: mat1 and mat2 shapes cannot be multiplied \(2x30 and 9x4\)$",
        ),
        (
            "one_output",
            r"gives shape \[2, 1\] for 2 examples .*classification needs shape \[2, 2\]",
        ),
        ("a_pair", r"gives a tuple for 2 examples"),
        ("fails", r"cannot be built for the data .*: KeyError: 'hidden_units'"),
    ],
)
def test_a_network_that_does_not_fit_its_data_is_one_line(builder, says):
    spec = ModelSpec.model_validate({"import": f"tests.models.custom:{builder}"})
    with pytest.raises(SpecError, match=says) as refused:
        models.create(spec, INPUTS["table"])
    assert refused.value.field == "model.import"
    assert "\n" not in str(refused.value)


def test_import_errors_name_the_path():
    with pytest.raises(SpecError, match="cannot import no_such_pkg.nets:build"):
        models.check(ModelSpec.model_validate({"import": "no_such_pkg.nets:build"}))


def test_a_builder_in_the_directory_kiln_runs_from_is_found(tmp_path):
    """As `python -m` finds it (and Ray's workers, which start in the driver's directory); the
    `kiln` script itself, unlike `python -m kiln`, does not put that directory on the path."""
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n\n"
        "def build(schema, width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(width))\n"
    )
    (tmp_path / "job.yaml").write_text(
        "name: mine\ntask: classification\ndata: {name: digits}\n"
        'model: {import: "nets:build", params: {width: 16}}\n'
    )
    kiln = Path(sys.executable).with_name("kiln")  # the console script pip installed
    checked = subprocess.run(
        [str(kiln), "validate", "job.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "nets:build on digits" in checked.stdout
