"""`make demo`: Kiln's main job end to end on a local Ray, shown as the commands a user types:
train, tune, register, serve behind the Open Inference Protocol, send requests, load test.

python -m tests.demo
"""

import base64
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.rule import Rule

SERVE_URL = "http://127.0.0.1:8000"
QUICK = ["--set", "train.epochs=6", "--set", "register.alias=production"]
CORPUS = Path(__file__).resolve().parents[2] / "shared/data/spoken-digits"  # ../shared, if there
SPEECH_DATA = (
    (f"the 2,500 of {CORPUS}", ["--set", f"data.path={CORPUS}"])
    if CORPUS.is_dir()
    else ("the 400 that ship with Kiln", [])
)
TRAINING = [
    ("Check the job spec (no Ray needed)", ["validate", "jobs/digits-cnn.yaml"]),
    (
        "Train the digits CNN on 2 Ray Train workers (DDP) and register it",
        ["train", "jobs/digits-cnn.yaml"],
    ),
    (
        "A short hyperparameter search: 4 trials, ASHA stops the weak ones; the best is registered",
        [
            "tune",
            "jobs/digits-cnn-tune.yaml",
            "--set",
            "tune.num_samples=4",
            "--set",
            "train.epochs=4",
        ],
    ),
    (
        "The other models serving/digits.yaml names (short runs)",
        ["train", "jobs/digits-mlp.yaml", "--quiet", *QUICK],
    ),
    (None, ["train", "jobs/digits-rnn.yaml", "--quiet", *QUICK]),
    (
        "A class-conditional GAN that draws the digit asked for (the whole job: 60 short epochs)",
        ["train", "jobs/digits-gan.yaml", "--quiet", "--set", "register.alias=production"],
    ),
    (
        f"Spoken digits: a CNN on log-mel frames of real recordings ({SPEECH_DATA[0]})",
        ["train", "jobs/spoken-digits-cnn.yaml", "--set", "register.alias=production"]
        + SPEECH_DATA[1],
    ),
    ("The registry", ["models", "list"]),
    ("The model card", ["models", "show", "digits-cnn@staging"]),
    (
        "Promote the CNN's first version to production (the endpoint follows this alias)",
        ["models", "promote", "digits-cnn", "1", "--alias", "production"],
    ),
    (
        "A two-tower recommender on synthetic interactions (1,000 users, 500 items)",
        [
            "train",
            "jobs/recsys-two-tower.yaml",
            "--quiet",
            "--set",
            "train.epochs=8",
            "--set",
            "register.alias=production",
        ],
    ),
    (
        "Users' recent histories into the feature cache (Kiln's embedded Redis)",
        ["features", "load", "--model", "recsys-two-tower@production"],
    ),
]
CONFIGS = ["serving/digits.yaml", "serving/recsys.yaml"]

console = Console()


def kiln(args: list[str]) -> None:
    console.print(f"[bold]$ kiln {shlex.join(args)}[/bold]")
    done = subprocess.run([sys.executable, "-m", "kiln", *args])
    if done.returncode != 0:
        console.print(f"[red]step failed with exit code {done.returncode}[/red]")
        sys.exit(done.returncode)


def start_serving() -> subprocess.Popen:
    console.print(Rule("Serve the models (Ray Serve, one application per model)"))
    console.print(f"[bold]$ kiln serve {' '.join(CONFIGS)}[/bold]   (in the background)")
    server = subprocess.Popen(
        [sys.executable, "-m", "kiln", "serve", *CONFIGS],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    ready = threading.Event()
    threading.Thread(target=relay, args=(server, ready), daemon=True).start()
    while not ready.wait(1):
        if server.poll() is not None:
            sys.exit(f"kiln serve stopped with exit code {server.returncode}")
    return server


def relay(server: subprocess.Popen, ready: threading.Event) -> None:
    """Show the server's output as it comes (a pipe nobody reads would block it)."""
    assert server.stdout is not None
    for line in server.stdout:
        console.print(f"  [dim]{line.rstrip()}[/dim]", highlight=False)
        if "Ctrl-C" in line:
            ready.set()


def curl(method: str, path: str, body: dict | list | None = None) -> dict:
    """Show the curl command, then send the request (with curl when it is installed)."""
    data = json.dumps(body) if body is not None else None
    shown = f"curl -s {'-X POST ' if method == 'POST' else ''}{SERVE_URL}{path}"
    if data is not None:
        shown += f" -d '{data if len(data) < 120 else data[:100] + '...'}'"
    console.print(f"[bold]$ {shown}[/bold]")
    if shutil.which("curl"):
        command = ["curl", "-s", "-X", method, f"{SERVE_URL}{path}"]
        output = subprocess.run(command + (["-d", data] if data else []), capture_output=True)
        answer = json.loads(output.stdout)
    else:
        answer = httpx.request(method, f"{SERVE_URL}{path}", content=data, timeout=30).json()
    return dict(answer)


def requests() -> None:
    from sklearn.datasets import load_digits

    console.print(Rule("Real requests in the Open Inference Protocol (KServe v2)"))
    console.print(curl("GET", "/v2/health/ready"))
    meta = curl("GET", "/v2/models/digits-cnn")
    console.print({k: meta[k] for k in ("name", "versions", "inputs", "outputs")})
    digits = load_digits()
    images = (digits.images[:5] / 16.0).astype(np.float32)[:, None]
    body = {"inputs": [tensor("input", "FP32", images)], "outputs": [{"name": "label"}]}
    answer = curl("POST", "/v2/models/digits-cnn/infer", body)
    console.print(
        f"  labels {answer['outputs'][0]['data']}, truth {digits.target[:5].tolist()}, "
        f"version {answer['model_version']}"
    )
    asked = np.arange(10)
    seeds = {
        "inputs": [
            tensor("seed", "INT64", np.arange(1, 11)),
            tensor("labels", "INT64", asked),
        ]
    }
    drawn = curl("POST", "/v2/models/digits-gan/infer", seeds)["outputs"][0]
    pixels = np.array(drawn["data"], np.float32).reshape(drawn["shape"])
    read = curl(
        "POST",
        "/v2/models/digits-cnn/infer",
        {"inputs": [tensor("input", "FP32", pixels)], "outputs": [{"name": "label"}]},
    )
    console.print(
        f"  the GAN drew the digits {asked.tolist()}; the CNN reads them as "
        f"{read['outputs'][0]['data']}:"
    )
    for start in range(0, len(pixels), 4):  # four to a row: 80 columns
        console.print(ascii_digits(pixels[start : start + 4, 0]) + "\n", highlight=False)
    error = curl(
        "POST",
        "/v2/models/digits-cnn/infer",
        {"inputs": [{**tensor("input", "FP32", images), "shape": [5, 64]}]},
    )
    console.print(f"  a wrong shape is a 400: {error}")


def spoken_digit() -> None:
    from kiln.data.speech import BUNDLED

    console.print(Rule("A spoken digit: a WAV recording sent to the speech model"))
    recording = BUNDLED / "7_nicolas_3.wav"  # a validation recording (FSDD, CC BY-SA 4.0)
    console.print(f"  {recording.name}: {recording.stat().st_size:,} bytes of 8 kHz speech")
    wav = base64.b64encode(recording.read_bytes()).decode()
    body = {
        "inputs": [{"name": "wav", "datatype": "BYTES", "shape": [1], "data": [wav]}],
        "outputs": [{"name": "label"}, {"name": "probabilities"}],
    }
    answer = curl("POST", "/v2/models/spoken-digits-cnn/infer", body)
    label, probabilities = (o["data"] for o in answer["outputs"])
    console.print(
        f"  heard {label[0]!r} (said: '7') with probability {max(probabilities):.3f}, "
        f"version {answer['model_version']}"
    )


def recommendations() -> None:
    console.print(Rule("Real-time recommendations: Redis features, before and after events"))
    user = "42"
    for _ in range(2):  # the first computes the user's vector (miss), the second reuses it (hit)
        answer = curl("GET", f"/v1/recommend/{user}?k=5")
        console.print(f"  cache {answer['cache']}: {[i['item_id'] for i in answer['items']]}")
    clicked = [i["item_id"] for i in answer["items"][:2]]
    events = [{"user_id": user, "item_id": item, "type": "click"} for item in clicked]
    console.print(curl("POST", "/v1/events", events))
    answer = curl("GET", f"/v1/recommend/{user}?k=5")
    console.print(
        f"  cache {answer['cache']} after clicking {clicked}: "
        f"{[i['item_id'] for i in answer['items']]}"
    )
    cold = curl("GET", "/v1/recommend/somebody-new?k=5")
    console.print(
        f"  an unknown user gets popular items (cold_start={cold['cold_start']}): "
        f"{[i['item_id'] for i in cold['items']]}"
    )


def tensor(name: str, datatype: str, array: np.ndarray) -> dict:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def ascii_digits(images: np.ndarray) -> str:
    shades = " .:-=+*#%@"
    rows = []
    for r in range(images.shape[1]):
        rows.append(
            "    ".join(
                "".join(shades[min(int(v * 10), 9)] * 2 for v in image[r]) for image in images
            )
        )
    return "\n".join("  " + row for row in rows)


def stop(server: subprocess.Popen) -> None:
    console.print(Rule("Stop serving (Ctrl-C)"))
    # What a terminal's Ctrl-C does: SIGINT to every process of the foreground group, the
    # local Ray that `kiln serve` started included.
    os.killpg(server.pid, signal.SIGINT)
    if server.wait(timeout=120) != 0:
        sys.exit(f"kiln serve stopped with exit code {server.returncode}")


def main() -> None:
    for title, args in TRAINING:
        if title:
            console.print(Rule(title))
        kiln(args)
    server = start_serving()
    try:
        requests()
        spoken_digit()
        recommendations()
        console.print(Rule("A short load test"))
        kiln(["bench", f"{SERVE_URL}/v2/models/digits-cnn", "-c", "16", "-d", "5"])
    finally:
        stop(server)
    console.print(Rule("done"))
    console.print(
        "Next: kiln train jobs/timeseries-lstm.yaml, kiln serve serving/digits.yaml, or kiln "
        "models export digits-cnn@staging --format onnx -o digits.onnx"
    )


if __name__ == "__main__":
    main()
