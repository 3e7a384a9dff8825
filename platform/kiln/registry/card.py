"""A version's card, `model.json`: the task, the model and its params, the data schema, and
the Open Inference Protocol inputs and outputs its task declares."""

from typing import Any

from kiln import models, tasks
from kiln.schema import DataSchema
from kiln.spec import JobSpec


def model_card(spec: JobSpec, schema: DataSchema) -> dict[str, Any]:
    inputs, outputs = tasks.get(spec.task).signature(schema, models.family_params(spec.model))
    return {
        "name": spec.model_name,
        "task": spec.task,
        "model": spec.model.model_dump(mode="json", by_alias=True),
        "schema": schema.to_json(),
        "inputs": [inputs],
        "outputs": [outputs],
    }
