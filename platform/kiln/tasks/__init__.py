"""Tasks, by name: each declares its metrics and objective, loss, model card signature,
training loop and predictor; everything else looks the task up here.

    task = tasks.get(spec.task)
    task.metrics, task.objective      # what a spec may optimise, and the default
    task.loop                         # kiln.train imports it; kiln.serve imports task.predictor

Adding a task is a module here (and its loop and predictor, where they run).
"""

from kiln.tasks import generation, recommendation, supervised  # noqa: F401  (registers the tasks)
from kiln.tasks.base import TASKS, Mode, Task, get, names

__all__ = ["TASKS", "Mode", "Task", "get", "names"]
