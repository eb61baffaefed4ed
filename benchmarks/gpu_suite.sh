#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one command, for the GPU machine (after the
# wheels of ../shared/device/README.md are installed and PYTHONPATH set as it says):
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
#
# 1. classify_throughput on CUDA for both shipped models: model-only light curves/s (IOBinding
#    with per-bucket device buffers is the default on CUDA), classify() end to end, ratio;
#    then each float16 companion that ships (none at present: atat-lsst 0.3.0's float16
#    graph misses the export's parity budget);
# 2. decode_throughput with a pool as large as the machine's cores: alerts/s decoded;
# 3. the worker is not run here: the GPU machine has no Kafka client library (see the device
#    README); run stream_throughput.py where confluent-kafka and a broker are available.
# Every result file lands in OUT_DIR (default benchmarks/results), named *_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
python3 -c "import onnxruntime as o; print('providers:', o.get_available_providers())"
for model in atat-lsst atat-ztf; do
  python3 -m benchmarks.classify_throughput --model "$model" --provider cuda --precision fp32 \
    --objects 8000 --batch-size 2048 --out "$OUT/classify_throughput_${model}_cuda.json"
done
# float16 companions (auto selects one on CUDA when it ships beside its model)
for model in atat-lsst atat-ztf; do
  if [ -f "astro_classifier/models/fp16/${model}.onnx" ]; then
    python3 -m benchmarks.classify_throughput --model "$model" --provider cuda --precision fp16 \
      --objects 8000 --batch-size 2048 --out "$OUT/classify_throughput_${model}_cuda_fp16.json"
  fi
done
python3 -m benchmarks.decode_throughput --pool-workers "$(nproc)" \
  --out "$OUT/decode_throughput_cuda_host.json" || echo "decode_throughput: see its --help"
