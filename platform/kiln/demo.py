"""`make demo`: Kiln's main job end to end on a local Ray, shown as the commands a user types.

python -m kiln.demo
"""

import shlex
import subprocess
import sys

from rich.console import Console
from rich.rule import Rule

STEPS = [
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
    ("The registry", ["models", "list"]),
    ("The model card", ["models", "show", "digits-cnn@staging"]),
]


def main() -> None:
    console = Console()
    for title, args in STEPS:
        console.print(Rule(title))
        console.print(f"[bold]$ kiln {shlex.join(args)}[/bold]")
        done = subprocess.run([sys.executable, "-m", "kiln", *args])
        if done.returncode != 0:
            console.print(f"[red]step failed with exit code {done.returncode}[/red]")
            sys.exit(done.returncode)
    console.print(Rule("done"))
    console.print(
        "Next: kiln train jobs/timeseries-lstm.yaml, or kiln models export digits-cnn@staging "
        "--format onnx -o digits.onnx"
    )


if __name__ == "__main__":
    main()
