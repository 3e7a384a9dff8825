"""Image folders (a folder per class, or a manifest) in memory and streamed through Ray Data:
the same split and tensors on both paths, a CNN trained on the stream, and the registered
model answering encoded image files with the training code's decoding and normalisation."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from kiln import data, preprocess
from kiln.data.stream import StreamedDataset
from kiln.errors import DataError
from kiln.registry import ModelRegistry
from kiln.spec import DataSpec, parse_spec
from kiln.train import run_job
from tests.conftest import quiet_view

pytestmark = pytest.mark.usefixtures("ray_cluster")


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """scikit-learn's 1,797 digits as 8x8 grey PNG files, a folder per digit."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(png((image * 255 / 16).astype(np.uint8)))
    return root


def build(path, streaming="auto", val_path=None, **params):
    spec = DataSpec(
        name="image_folder", path=str(path), val_path=val_path, params=params, streaming=streaming
    )
    data.check(spec)
    return data.build(spec, "classification")


def test_streamed_and_in_memory_images_are_the_same_tensors(digit_folder):
    streamed = build(digit_folder, size=[8, 8], channels=1, streaming=True)
    whole = build(digit_folder, size=[8, 8], channels=1, streaming=False)
    assert isinstance(streamed, StreamedDataset)
    assert streamed.schema == whole.schema and streamed.train_rows == len(whole.y_train)
    assert whole.schema.input_shape == [1, 8, 8] and whole.schema.classes == list("0123456789")
    rule = whole.schema.transform["image"]
    assert rule["size"] == [8, 8] and rule["channels"] == 1
    train = np.concatenate([b["x"] for b in streamed.datasets["train"].iter_batches()])
    assert np.allclose(
        np.sort(train.reshape(len(train), -1), axis=0),
        np.sort(whole.x_train.reshape(len(train), -1), axis=0),
    )
    pixels = whole.x_train * (np.array(rule["std"]) + 1e-6) + np.array(rule["mean"])
    assert abs(pixels.mean() - rule["mean"][0]) < 1  # normalised by the training pixels


def test_a_folder_of_validation_images_validates_every_image_on_both_paths(digit_folder, tmp_path):
    """A train/ and a val/ folder, as many image sets come: `data.val_path` is the second."""
    val = tmp_path / "val"
    for label in "0123456789":
        (val / label).mkdir(parents=True)
        for image in sorted((digit_folder / label).iterdir())[:10]:
            (val / label / image.name).write_bytes(image.read_bytes())
    for streaming in (False, True):
        d = build(digit_folder, streaming, val_path=str(val), size=8, channels=1)
        if streaming:
            assert d.train_rows == 1797 and d.datasets["val"].count() == 100
        else:
            assert (len(d.y_train), len(d.y_val)) == (1797, 100)
            assert sorted(np.bincount(d.y_val)) == [10] * 10


def test_a_manifest_names_images_anywhere(digit_folder, tmp_path):
    files = sorted(digit_folder.glob("[37]/*.png"))
    manifest = tmp_path / "images.csv"
    rows = [f"{p},{'three' if p.parent.name == '3' else 'seven'}" for p in files]
    manifest.write_text("path,label\n" + "\n".join(rows))
    built = build(manifest, size=[8, 8], channels=3)
    assert built.schema.classes == ["seven", "three"] and built.schema.input_shape == [3, 8, 8]
    square = build(manifest, size=6, channels=1)  # one number is a square, as torchvision's
    assert square.schema.input_shape == [1, 6, 6]


def test_bad_folders_are_refused_naming_the_file(digit_folder, tmp_path):
    with pytest.raises(DataError, match="no image files"):
        build(tmp_path)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(png(np.zeros((8, 8), np.uint8)))
    with pytest.raises(DataError, match="one class"):
        build(tmp_path)
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "b.png").write_bytes(b"not a png")
    for streaming in (False, True):
        with pytest.raises(DataError, match=r"dogs/b\.png: not an image"):
            build(tmp_path, streaming=streaming, size=[8, 8])
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\nnowhere.png,x\n")
    with pytest.raises(DataError, match="nowhere.png, which does not exist"):
        build(manifest)


@pytest.mark.slow
def test_a_cnn_trained_on_streamed_images_answers_png_files(digit_folder, fresh_home):
    from kiln.serve.replica.predictor import Predictor

    spec = parse_spec(
        {
            "name": "digit-files",
            "task": "classification",
            "data": {
                "name": "image_folder",
                "path": str(digit_folder),
                "params": {"size": [8, 8], "channels": 1},
                "streaming": True,
            },
            "model": {"family": "cnn", "params": {"channels": [16, 32], "hidden": 64}},
            "train": {"epochs": 4, "batch_size": 64, "optimizer": {"lr": 0.003}},
            "scaling": {"num_workers": 2},
        },
        "digit-files",
    )
    outcome = run_job(spec, quiet_view(spec))
    assert outcome.metrics["val_accuracy"] > 0.9
    registry = ModelRegistry.open()
    predictor = Predictor.load(registry, registry.resolve("digit-files@1"))
    files = sorted(digit_folder.glob("*/1?.png"))
    encoded = np.array([p.read_bytes() for p in files], dtype=object)
    index = [t.name for t in predictor.inputs].index("image")
    served = predictor.run(predictor.prepare(index, encoded))["label"]
    raw = np.stack([np.asarray(Image.open(p))[None] for p in files]).astype(np.float32)
    from_pixels = predictor.run(predictor.prepare(0, raw))["label"]  # raw 0..255 pixels
    assert served.tolist() == from_pixels.tolist()
    truth = [p.parent.name for p in files]
    assert np.mean(served == np.array(truth)) > 0.85


def test_decoding_refuses_a_decompression_bomb_before_decoding_it():
    """A 120 KB PNG of 12,000 x 12,000 plain pixels (432 MB as RGB), and one past twice
    Pillow's limit, which Pillow refuses as it opens: each a one-line ImageError."""
    for side in (12_000, 20_000):
        buffer = io.BytesIO()
        Image.new("L", (side, side)).save(buffer, format="PNG")
        with pytest.raises(preprocess.ImageError, match="more than the 89 megapixels"):
            preprocess.decode_image(buffer.getvalue(), (32, 32), 3)
    with pytest.raises(preprocess.ImageError, match="^not an image \\(no format Pillow reads"):
        preprocess.decode_image(b"hello", (8, 8), 1)


def test_a_large_jpeg_decodes_at_a_reduced_scale_to_the_same_pixels():
    """Pillow's draft mode decodes a JPEG at 1/8 scale when the model wants 32 x 32: the
    pixels match a full decode then resize within a grey level on average."""
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[0]).resize((2560, 1920))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    drafted = preprocess.decode_image(buffer.getvalue(), (32, 32), 3).astype(np.float64)
    with Image.open(io.BytesIO(buffer.getvalue())) as full:
        whole = np.asarray(full.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    assert drafted.shape == (3, 32, 32)
    assert np.abs(drafted - whole.transpose(2, 0, 1)).mean() < 1.0


def test_a_photo_is_decoded_upright_as_its_exif_orientation_says():
    """A phone stores a portrait photo's pixels on their side with EXIF orientation 6 (turn
    90 degrees clockwise to view): decoded, it equals the upright photo, in both layouts."""
    upright = np.zeros((48, 32, 3), np.uint8)  # portrait: a bright top band marks "up"
    upright[:8] = 255
    on_its_side = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image is turned 90 degrees clockwise to view
    stored = io.BytesIO()
    on_its_side.save(stored, format="PNG", exif=exif)
    plain = io.BytesIO()
    Image.fromarray(upright).save(plain, format="PNG")
    for channels in (1, 3):
        turned = preprocess.decode_image(stored.getvalue(), (24, 16), channels)
        expected = preprocess.decode_image(plain.getvalue(), (24, 16), channels)
        assert turned.shape == (channels, 24, 16)
        np.testing.assert_array_equal(turned, expected)
        assert turned[:, :3].min() == 255 and turned[:, -3:].max() == 0  # the band on top


@pytest.mark.parametrize(
    ("wide", "form"),
    [
        (lambda grey: grey.astype(np.uint16) * 257, "PNG"),  # 16 bits
        (lambda grey: grey.astype(np.int32) * 257, "TIFF"),  # 32-bit integers of 16-bit values
        (lambda grey: grey.astype(np.float32) / 255, "TIFF"),  # floats in [0, 1]
    ],
)
def test_images_of_more_than_8_bits_decode_to_the_same_grey_levels(wide, form):
    """Microscopes, X-rays and scanners write 16-bit PNG and TIFF: they were clipped at 255
    (all white), a float TIFF all black. Each decodes as its 8-bit twin does."""
    grey = np.random.default_rng(0).integers(0, 256, (24, 16), dtype=np.uint8)
    eight = io.BytesIO()
    Image.fromarray(grey).save(eight, format="PNG")
    stored = io.BytesIO()
    Image.fromarray(wide(grey)).save(stored, format=form)
    for channels in (1, 3):
        expected = preprocess.decode_image(eight.getvalue(), (24, 16), channels)
        decoded = preprocess.decode_image(stored.getvalue(), (24, 16), channels)
        np.testing.assert_array_equal(decoded, expected)
