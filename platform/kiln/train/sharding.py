"""How a streamed dataset is split across a run's workers: configured on the driver and
applied by the run's controller, so this module imports no torch."""

import ray.train


class ExactValidation(ray.train.DataConfig):
    """Training shards of equal length (equal steps on every rank, as DDP needs); validation
    shards as they come, so that no validation row is left out of the metrics."""

    def __init__(self) -> None:
        # Both are split (Ray Train then tracks and shuts down both split coordinators).
        super().__init__(datasets_to_split=["train", "val"])

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = super().configure(
            {k: v for k, v in datasets.items() if k != "val"},
            world_size,
            worker_handles,
            worker_node_ids,
            **kwargs,
        )
        if "val" in datasets:
            val = datasets["val"].copy(datasets["val"])
            if val.name is None:
                val.set_name("val")
            val.context.execution_options = self._resolve_execution_options("val")
            for rank, shard in enumerate(val.streaming_split(world_size, equal=False)):
                output[rank]["val"] = shard
        return output
