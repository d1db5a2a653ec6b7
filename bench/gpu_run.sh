#!/usr/bin/env bash
# Run bench/bench_gpu.py on a lent GPU machine (device tool), after bench/gpu_prepare.sh here:
#
#     run(command="bash bench/gpu_run.sh --minutes 5", carry=[".whl",
#         "shared/data/isbi2012/isbi2012_train.npz"], timeout_s=600)
#
# The image's python3 holds torch, numpy and scipy; the rest of neuropipe's needs come as the
# wheels in .whl/, installed beside it in /tmp/site. The log and the result's JSON line are
# written to $OUT (the device tool brings them back) as well as printed.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PATH="/tmp/site/bin:$PATH"
out="${OUT:-$(mktemp -d)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia-smi.txt"
python3 bench/bench_gpu.py "$@" 2>&1 | tee "$out/bench_gpu.log"
status=${PIPESTATUS[0]}
tail -n 1 "$out/bench_gpu.log" > "$out/bench_gpu.json"
exit "$status"
