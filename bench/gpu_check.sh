#!/usr/bin/env bash
# The GPU checks in one command: fp16 and bf16 five-objective pre-training with --skip_nonfinite_steps
# (a NaN step planted), Gb under fp16, DDP on 2 GPUs when there are 2, and bench/bench_gpu.py, in
# under 10 minutes; then one table (pass/fail, tokens/s, ratio to the MLM loop, MFU). The work is
# done by bench/gpu_check.py; see docs/gpu.md.
#
#   bench/gpu_check.sh                  # on the GPU machine
#   bench/gpu_check.sh --dry_run --gpus 2
#   bench/gpu_check.sh --cpu            # rehearsal on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python || true)}
if [ -z "$PYTHON" ]; then
    echo "error: no python3 on PATH (set PYTHON=/path/to/python)" >&2
    exit 2
fi
# Nothing here may wait on the network: the models are built from configs, the data is synthetic.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
exec "$PYTHON" bench/gpu_check.py "$@"
