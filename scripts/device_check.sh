#!/usr/bin/env bash
# Issue 3's GPU checks in one call, for a session that is lent a device (its `run` verb; ~3-6 minutes):
#   run(command="bash scripts/device_check.sh", timeout_s=540)
# It uses the device image's own python3 (torch with CUDA, numpy, scipy, networkx, pytest, hypothesis: all the
# library and these tests need). Results land in $OUT: the GPU, the CUDA-relevant tests, the batched
# throughput table (bench/bench_batch.py, the 10,000 contexts/s target at k = 1000, n = 8) and its JSON.
# DEVICE=cpu runs the same steps here as a smoke test.
set -uo pipefail
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/device.txt"
timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_exact.py -k "cuda or batch or torch or float32" 2>&1 \
  | tee "$OUT/pytest.txt"
timeout 280 $PY bench/bench_batch.py --device "$DEVICE" --float32 --max-seconds 20 --out "$OUT/bench_batch_$DEVICE.json" 2>&1 \
  | tee "$OUT/bench_batch_$DEVICE.md"
