#!/usr/bin/env bash
# Issue 13's GPU measurements in one command, for a lent GPU machine (run by the device tool in
# the repository root, with .whl and .bench carried: see benchmarks/README.md, "On a lent GPU").
# About 7 minutes on an H100/H200: the trial-speed comparison (BERT-base, the 45k THUCNews
# titles, batch 64, max length 64, bf16, 2 epochs a side), then trials per hour with K = 1, 2, 4
# workers on card 0 (BERT-base trials on 12,000 titles), then this tests with the GPU
# present. Each step has its own time limit, so the figures of the earlier steps always come back
# (printed, and as JSON and text files under $OUT).
# SKIP_INSTALL=1 uses the Python environment as it is (a machine with MLflow and Optuna);
# SIZE=small TRAIN_ROWS=400 DEV_ROWS=100 DATA=DIR shrink it for a dry run on a CPU.
set -uo pipefail
OUT="${OUT:-/tmp/sweeplab-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-python3}"
DATA="${DATA:-.bench/thucnews}"
[ -d "$DATA" ] || DATA=shared/data/news/THUCNews/data
SIZE="${SIZE:-base}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch, transformers, optuna, mlflow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"

echo "== 1. one trial through sweeplab and through a plain loop"
timeout 250 "$PY" benchmarks/trial_speed.py --size "$SIZE" --data-dir "$DATA" --max-length 64 --epochs 2 --repeats 1 \
  --out "$OUT/trial_speed.json" 2>&1 | tee "$OUT/trial_speed.txt"

echo "== 2. trials per hour with K = 1, 2, 4 workers on card 0"
timeout 250 "$PY" benchmarks/workers_scaling.py --task news --size "$SIZE" --data-dir "$DATA" \
  --train-rows "${TRAIN_ROWS:-12000}" --dev-rows "${DEV_ROWS:-1000}" --workers 1 2 4 --gpus 0 --trials-per-worker 3 \
  --epochs 1 --max-length 64 --out "$OUT/workers.json" 2>&1 | tee "$OUT/workers.txt"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>/dev/null | tee -a "$OUT/workers.txt"

echo "== 3. this issue's tests, with the GPU present"
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/trainers/test_step_syncs.py tests/sweeps/test_gpu_sharing.py 2>&1 \
  | tail -15 | tee "$OUT/tests.txt"
