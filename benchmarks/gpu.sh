#!/usr/bin/env bash
# Every GPU cell of the README in one go, on one GPU, in under 8 minutes of wall time:
#   bash benchmarks/gpu.sh            # results in gpu-results/ (or $OUT when set)
# Each part has its own time limit, so one slow part cannot eat the others' time, and
# every part writes one JSON line per case to its own file (a failed part leaves its
# error in <part>.err and the rest still run). Needs the project installed
# (pip install --no-deps --no-build-isolation -e . where there is no registry).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export BETAWEIGHTER_CACHE="$out/cache"

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.jsonl" 2> "$out/$name.err"
  echo "{\"part\": \"$name\", \"exit\": $?, \"seconds\": $((SECONDS - start))}" \
    | tee -a "$out/parts.jsonl"
}

python - > "$out/device.json" <<'PY'
import json, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                  else None}))
PY
cat "$out/device.json"

# step cost at the paper's shapes (ResNet-18 at 84 px, 32 images x 4 rotations, 10-10-10)
part step_cost_paper 150 python benchmarks/step_cost.py --paper --device cuda \
  --precisions fp32 bf16 --memory
# the default weighting: cluster weights, running direction every 4, forward / one-sided
part step_cost_default 60 python benchmarks/step_cost.py --default --paper --device cuda
# loader throughput with workers (STL-10-shaped binaries on disk)
part throughput 90 python benchmarks/throughput.py --device cuda --images 20000 --steps 30 \
  --workers 0 2 4 8
# a short compare on the demo set: the baseline, the default weighting and its controls
part compare_demo 180 betaweighter compare demo --seeds 1 --out "$out/runs" \
  --set train.device=cuda
cp "$out"/runs/*-compare/compare.csv "$out/compare_demo.csv" 2>/dev/null || true
echo "results in $out"
