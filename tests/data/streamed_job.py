"""One streamed training run in a Ray cluster of its own, with a small object store, as the
streaming test's child process (its peak RSS is the driver's, measured from outside).

    python -m tests.data.streamed_job SPEC.json OBJECT_STORE_MB [CPUS]  ->  one JSON line on stdout
"""

import json
import os
import sys

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(spec_file: str, store_mb: int, cpus: int = 2) -> None:
    import ray

    import kiln.train.publish  # noqa: F401  registration's imports (torch): not the data's
    from kiln.spec import parse_spec
    from kiln.train import run_job
    from tests.conftest import quiet_view

    ray.init(
        address="local", num_cpus=cpus, object_store_memory=store_mb * 2**20, log_to_driver=False
    )
    import psutil

    with open(spec_file) as f:
        spec = parse_spec(json.load(f), spec_file)
    started = psutil.Process().memory_info().rss  # Ray, torch and Kiln loaded, no data yet
    outcome = run_job(spec, quiet_view(spec))
    from ray._private.internal_api import memory_summary

    summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    ray.shutdown()
    result = {"outcome": outcome.to_json(), "memory": summary, "rss_before_data": started}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
