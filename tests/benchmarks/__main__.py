"""`make bench`: run every benchmark and write its figures under bench-results/.

python -m tests.benchmarks            # all
python -m tests.benchmarks train      # one
"""

import sys

from tests.benchmarks import (
    bench_amp,
    bench_autoscale,
    bench_embeddings,
    bench_interactions,
    bench_recommend,
    bench_registry,
    bench_rollout,
    bench_serve,
    bench_soak,
    bench_speech,
    bench_stream,
    bench_train,
    bench_tune,
)

BENCHMARKS = {
    "train": bench_train.main,
    "tune": bench_tune.main,
    "amp": bench_amp.main,
    "serve": bench_serve.main,
    "rollout": bench_rollout.main,
    "recommend": bench_recommend.main,
    "interactions": bench_interactions.main,
    "embeddings": bench_embeddings.main,
    "soak": bench_soak.main,
    "stream": bench_stream.main,
    "speech": bench_speech.main,
    "autoscale": bench_autoscale.main,
    "registry": bench_registry.main,
}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(BENCHMARKS)
    for name in chosen:
        BENCHMARKS[name]()
