#!/usr/bin/env bash
# Everything Kiln checks and measures on the GPU machine, in one device call:
#
#   python tests/gpu/bundle.py              # here, once: .gpu/site-py3.12.tar.xz (Ray & co.)
#   device run, carry [".gpu/site-py3.12.tar.xz"]:  bash tests/gpu/run_on_gpu.sh
#
# Unpacks the bundle onto PYTHONPATH (ahead of the image's packages), then, each step in a time
# box of its own so that one failure does not cost the others: the GPU tests (pytest -m gpu),
# `kiln train` on the GPU and on the machine's CPUs (time to the first epoch), the streamed-data
# benchmark on the machine's cores, and the precision benchmark. Logs and figures go to $OUT
# (the device tool's folder; bench-results/gpu elsewhere); steps.txt sums them up. STEPS="stream amp"
# runs the steps named alone.
set -uo pipefail
OUT=${OUT:-bench-results/gpu}
mkdir -p "$OUT"
python=${PYTHON:-python3}
version=$($python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site=/tmp/site
$python -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
  ".gpu/site-py$version.tar.xz" /tmp || exit 2  # its folder is site/
export PYTHONPATH="$site:$PWD/platform:$PWD" PYTHONUNBUFFERED=1
export KILN_HOME=/tmp/kiln-home RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled

chosen() { [[ -z ${STEPS:-} || " $STEPS " == *" $1 "* ]]; }  # STEPS="a b": those alone

step() {  # step NAME SECONDS COMMAND...: its output, each line with the seconds since it
  # started, in $OUT/NAME.log; its exit status and time in steps.txt
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  chosen "$name" || return 0
  timeout -k 10 "$limit" "$@" 2>&1 | $python -u -c '
import sys, time
start = time.monotonic()
for line in sys.stdin:
    print(f"{time.monotonic() - start:7.2f} {line}", end="")' >"$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name: rc $rc in $((SECONDS - started)) s" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi -L; echo "$(nproc) cores"; $python -c 'import torch, ray, kiln
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print("torch", torch.__version__, gpu, "ray", ray.__version__, ray.__file__, kiln.__file__)'
} >>"$OUT/steps.txt" 2>&1  # the device tool brings back 8 files: the steps' logs and figures
step train_gpu 90 $python -m kiln train jobs/digits-cnn.yaml \
  --set scaling.use_gpu=true --set scaling.num_workers=1
step train_cpu 60 $python -m kiln train jobs/digits-cnn.yaml
step stream "${STREAM_LIMIT_S:-150}" env KILN_BENCH_STREAM_ROWS=${KILN_BENCH_STREAM_ROWS:-4000000} $python -m tests.benchmarks stream
chosen stream && cp bench-results/stream.json "$OUT/"
step gpu_tests 200 $python -m pytest -m gpu tests/gpu -p no:cacheprovider
step amp 45 $python -m tests.benchmarks amp
chosen amp && cp bench-results/amp.json "$OUT/" 2>/dev/null  # none without CUDA
exit 0
