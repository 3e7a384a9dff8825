"""What a model takes and gives, agreed between the data that trains it, the model built for
it and the server that answers with it. A dataset builder fills it in; `model.json` stores it.

    schema = DataSchema(task="classification", input_shape=[1, 8, 8], input_dtype="float32",
                        output_dim=10, classes=[str(d) for d in range(10)])
"""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DataSchema:
    task: str
    input_shape: list[int]  # one example, without the batch dimension
    input_dtype: str  # "float32", or "int64" for token ids
    output_dim: int  # classes, or values to predict
    classes: list[str] | None = None
    vocab_size: int | None = None
    # Forecasting targets are scaled for training; metrics are reported in the data's own units.
    target_scale: float = 1.0
    # How raw inputs become model inputs (JSON): standardisation, a vocabulary, offsets.
    transform: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
