"""What a task is: everything about a job that depends on what it learns, in one place.

    @register
    CLASSIFICATION = Task(name="classification", metrics=(...), objective=("val_accuracy", "max"),
                          loop="kiln.train.loops.supervised", predictor="kiln...:Classifier", ...)

The training loop and the predictor run in higher layers (Ray Train workers, Serve replicas),
so a task names them by import path and those layers import them: a task never imports code
that runs it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kiln.errors import UnknownNameError
from kiln.schema import DataSchema

Mode = Literal["min", "max"]
Tensor = dict[str, Any]  # {"name", "datatype", "shape"}: one tensor of the Open Inference Protocol


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]  # reported every epoch; the only ones a spec may optimise
    objective: tuple[str, Mode]  # the metric a spec optimises unless it names another
    loop: str  # module with train_loop_per_worker(config), imported by the workers only
    predictor: str  # "module:Class": a kiln.serve.replica.predictor.Predictor subclass
    # The model card's inputs and outputs, from the data schema and the family's params.
    signature: Callable[[DataSchema, dict[str, Any]], tuple[Tensor, Tensor]]
    loss: Callable[[], Any] | None = None  # an nn.Module factory, for tasks with one criterion
    # Registered with a sample of training inputs that serving compares live inputs with.
    drift: bool = False
    # "module:function" run on the driver before training, (spec, dataset) -> dict that every
    # worker receives as config["extras"] (the GAN's evaluation classifier).
    prepare: str | None = None

    @property
    def model_takes_inputs(self) -> bool:
        """Whether the loop calls `model(inputs)` on a batch of the schema's inputs and learns
        one row of `output_dim` per example (a task with one criterion); a GAN's or a
        ranker's loop calls its networks' own methods."""
        return self.loss is not None

    def criterion(self) -> Any:
        """The loss module of a task trained on one (a GAN's or a ranker's loop has its own)."""
        if self.loss is None:
            raise TypeError(f"task {self.name} has no single criterion")
        return self.loss()


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    if task.objective[0] not in task.metrics:
        raise ValueError(f"task {task.name}: objective {task.objective[0]} is not in its metrics")
    TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    if name not in TASKS:
        raise UnknownNameError("task", name, list(TASKS))
    return TASKS[name]


def names() -> list[str]:
    return sorted(TASKS)
