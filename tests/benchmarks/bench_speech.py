"""Speech recognition on the spoken-digit corpus, in one run: the CNN and the GRU jobs on FSDD's
index split and on each leave-one-speaker-out fold (validation accuracy, epochs, seconds per
epoch), then the CNN served from raw audio and loaded by `kiln bench` with a WAV recording as
its payload, at concurrency 1 and 16. Figures go to bench-results/speech.json.

python -m tests.benchmarks speech      # KILN_SPEECH_DATA=folder, else ../shared, else bundled
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "speech.json"
JOBS = {"cnn": "jobs/spoken-digits-cnn.yaml", "gru": "jobs/spoken-digits-rnn.yaml"}


def corpus() -> Path:
    from kiln.data.speech import BUNDLED

    for candidate in (
        os.environ.get("KILN_SPEECH_DATA"),
        ROOT.parent / "shared/data/spoken-digits",
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return BUNDLED


def train(job: str, path: Path, overrides: list[str]) -> dict:
    from rich.console import Console as Quiet

    from kiln.train import run_job
    from kiln.train.progress import ProgressView
    from kiln.validate import load_spec

    spec = load_spec(ROOT / job, [f"data.path={path}", *overrides])
    view = ProgressView(spec.name, spec.train.epochs, "val_accuracy", Quiet(quiet=True), quiet=True)
    outcome = run_job(spec, view)
    seconds = [h["epoch_time_s"] for h in outcome.history]
    return {
        "val_accuracy": outcome.metrics["val_accuracy"],
        "epochs": len(outcome.history),
        "epoch_s": round(sum(seconds) / len(seconds), 2),
        "version": outcome.version,
    }


def speakers(path: Path) -> list[str]:
    return sorted({p.stem.split("_")[1] for p in path.glob("*.wav")})


def serve_and_bench(path: Path) -> dict:
    """spoken-digits-cnn@1 behind serving/digits.yaml's application, then `kiln bench` with
    one recording (a validation one, as a WAV file) at concurrency 1 and 16."""
    import ray

    from kiln.registry import ModelRegistry
    from kiln.serve.control import deploy
    from tests.conftest import free_port

    ModelRegistry.open().promote("spoken-digits-cnn", 1, "production")
    port = free_port()
    config = deploy.load_config(ROOT / "serving/digits.yaml", port=port, only=["spoken-digits-cnn"])
    dashboard = "http://" + ray._private.worker.get_dashboard_url()
    deploy.deploy(config, dashboard)
    deploy.wait_until_running(config, dashboard)
    recording = sorted(path.glob("7_*_3.wav"))[0]
    payload = Path(tempfile.mkdtemp()) / "wav.json"
    wav = base64.b64encode(recording.read_bytes()).decode()
    payload.write_text(
        json.dumps({"inputs": [{"name": "wav", "datatype": "BYTES", "shape": [1], "data": [wav]}]})
    )
    url = f"http://127.0.0.1:{port}/v2/models/spoken-digits-cnn"
    results = {"recording": recording.name}
    for concurrency in (1, 16):
        done = subprocess.run(
            [sys.executable, "-m", "kiln", "bench", url, "--payload", str(payload)]
            + ["-c", str(concurrency), "-d", "10", "--warmup", "2", "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        results[f"c{concurrency}"] = json.loads(done.stdout)
    deploy.shutdown(dashboard)
    return results


def main() -> None:
    import ray

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # as `kiln serve` starts Ray
    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-bench-speech-")
    path = corpus()
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    started = time.perf_counter()
    results: dict = {"corpus": str(path), "index": {}, "speaker": {}}
    for model, job in JOBS.items():  # the CNN's index run is version 1: the one served below
        results["index"][model] = train(job, path, ["data.params.split=index"])
        for speaker in speakers(path):
            fold = ["data.params.split=speaker", f"data.params.val_speakers=[{speaker}]"]
            results["speaker"].setdefault(model, {})[speaker] = train(job, path, fold)
    results["training_wall_s"] = round(time.perf_counter() - started, 1)
    results["serving"] = serve_and_bench(path)
    ray.shutdown()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    show(results)


def show(results: dict) -> None:
    table = Table("model", "split", "val accuracy", "epochs", "s / epoch", title=results["corpus"])
    for model, row in results["index"].items():
        table.add_row(
            model,
            "index (0-4 validate)",
            f"{row['val_accuracy']:.4f}",
            str(row["epochs"]),
            f"{row['epoch_s']:.1f}",
        )
        for speaker, fold in results["speaker"][model].items():
            table.add_row(
                model,
                f"speaker: {speaker}",
                f"{fold['val_accuracy']:.4f}",
                str(fold["epochs"]),
                f"{fold['epoch_s']:.1f}",
            )
    Console().print(table)
    serving = Table(
        "concurrency", "req/s", "p50 ms", "p99 ms", "errors", title="one recording (WAV) a request"
    )
    for c in ("c1", "c16"):
        s = results["serving"][c]
        serving.add_row(
            c[1:],
            f"{s['throughput_rps']:.0f}",
            f"{s['p50_ms']:.1f}",
            f"{s['p99_ms']:.1f}",
            str(sum(s["errors"].values())),
        )
    Console().print(serving)
