#!/usr/bin/env bash
# Every GPU check of issue 18 in one go: about 5 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh            # from the repository root; writes out/gpu-check/
#
# Needs ../shared/assets (hf-cache, imagenet-samples, imagenet-val; 300 + 300 images are
# enough) and a CUDA build of torch. Each step has its own time limit, so one slow step cannot
# eat the others' time; every step's output (markdown + JSON) lands in $OUT. Read the results
# against the targets in docs/benchmarks.md ("GPU checks of issue 18").
set -u
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
export HF_HOME=${HF_HOME:-../shared/assets/hf-cache} HF_HUB_OFFLINE=1
PY=${PYTHON:-python}
step() {  # step <name> <seconds> <command...>
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/steps.log"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1

# 1. tests/gpu: the two H200 failures (graph count, graph memory of a second runner) and the rest.
step pytest-gpu 120 "$PY" -m pytest tests/gpu -q -p no:cacheprovider

# 2. Which attention kernel runs with the size bias (merged tokens), and its cost.
step sdpa 60 "$PY" -m bench.sdpa_backends --device cuda --precision bf16 --batch 64 --tokens 197,131,58

# 3. deit_base, bf16, CUDA graphs, every level: speed-up / ideal at batch 64 and 256 (>= 0.85),
#    batch-1 p50 / dense (<= 1.05), operators / dense (<= 1.3); the targets table is in the .md.
step model-deit_base 180 "$PY" -m bench model --model deit_base_patch16_224 --device cuda --precision bf16 \
  --batch-sizes 1,64,256 --max-graph-batch 256 --min-time-s 0.3 --max-calls 100 --out "$OUT/model-deit_base"

# 4. deit_base dense at batch 256 on the compiled path (>= 0.40 of the bf16 matmul peak of the same run).
step compiled-deit_base 240 "$PY" -m bench model --model deit_base_patch16_224 --device cuda --precision bf16 \
  --batch-sizes 256 --levels dense --compile --max-graph-batch 256 --min-time-s 0.5 --max-calls 100 \
  --out "$OUT/compiled-deit_base"

# 5. bf16 agreement with fp32 at every level (>= 99.5 %), through the CUDA-graph runner.
step precision 120 "$PY" -m bench precision --model deit_tiny_patch16_224 --device cuda --precisions bf16 \
  --images-per-set 300 --time-limit-s 100 --out "$OUT/precision"

# 6. The GPU speed table of the level card (SAIT_LEVELS=auto then offers the levels that are faster
#    on this GPU); written into a copy, to commit after reading it.
cp models/cards/deit_tiny_patch16_224.json "$OUT/card-deit_tiny.json"
step card-speed 120 "$PY" -m models.make_card --add-speed "$OUT/card-deit_tiny.json" --device cuda \
  --precision bf16 --speed-batch-sizes 1,8,32,64,128 --speed-min-time-s 0.2 --speed-rounds 2 \
  --docs "$OUT/card-deit_tiny.md"

echo "done: $OUT" | tee -a "$OUT/steps.log"
