"""Speech recognition from real recordings: the CNN job on FSDD's index split, its reload, its
confusion matrix, and a voice the model has never heard (the speaker split)."""

import numpy as np
import pytest

from kiln import data as datasets
from kiln.data.speech import BUNDLED
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.train import run_job
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view, speech_corpus
from tests.evaluation import evaluate

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]

# The accuracy bars are FSDD's whole corpus's (3,000 recordings, 6 speakers): on the 400 that
# ship with Kiln (2 speakers) the same job reached 0.36-0.59 on the index split.
whole_corpus = pytest.mark.skipif(
    speech_corpus() == BUNDLED,
    reason="needs FSDD's whole corpus: KILN_SPEECH_DATA, or ../shared/data/spoken-digits "
    "beside the clone (make test finds it there)",
)


@whole_corpus
def test_cnn_recognises_spoken_digits_on_the_index_split(spoken_digits_cnn):
    spec, outcome = spoken_digits_cnn
    epochs = outcome.history
    seconds = np.mean([h["epoch_time_s"] for h in epochs])
    accuracy = outcome.metrics["val_accuracy"]
    print(
        f"\nspoken-digits-cnn on {speech_corpus()}: val_accuracy {accuracy:.4f}"
        f" after {len(epochs)} epochs, {seconds:.1f} s an epoch"
    )
    assert accuracy >= 0.95


def test_the_registered_model_reloads_to_the_identical_accuracy(spoken_digits_cnn):
    spec, outcome = spoken_digits_cnn
    registry = ModelRegistry.open()
    version = registry.resolve(f"spoken-digits-cnn@{outcome.version}")
    loaded = load_model(registry, version)
    data = datasets.build(spec.data, spec.task)
    metrics = evaluate(loaded.module, data.x_val, data.y_val, data.schema)
    assert metrics["val_accuracy"] == pytest.approx(outcome.metrics["val_accuracy"], abs=1e-12)
    assert {"confusion.png", "confusion.json", "curves.png"} <= set(version.manifest["files"])
    counts = np.array(registry.read_json(version, "confusion.json")["counts"])
    assert counts.sum() == len(data.y_val)
    assert counts.trace() / counts.sum() == pytest.approx(outcome.metrics["val_accuracy"])
    assert loaded.card["inputs"] == [{"name": "waveform", "datatype": "FP32", "shape": [-1, 8000]}]


@pytest.mark.slow
@whole_corpus
def test_a_voice_the_model_has_never_heard(fresh_home):
    """Trained on every speaker but one, validated on that one: reported, and above chance
    (a short run: the benchmark trains every fold to the end)."""
    held_out = "yweweler"
    overrides = [
        f"data.path={speech_corpus()}",
        "data.params.split=speaker",
        f"data.params.val_speakers=[{held_out}]",
        "train.epochs=5",
    ]
    spec = load_spec(ROOT / "jobs/spoken-digits-cnn.yaml", overrides)
    outcome = run_job(spec, quiet_view(spec))
    accuracy = outcome.metrics["val_accuracy"]
    print(f"\nspeaker split, validated on {held_out}: val_accuracy {accuracy:.4f}")
    assert accuracy > 2 * outcome.baselines["majority_val_accuracy"]
