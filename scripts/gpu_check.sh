#!/usr/bin/env bash
# What a GPU must tell the project, in one call of about 8 minutes on one H100-class GPU,
# with no network and without Ray, Optuna or W&B. Run from the repository root:
#
#   bash scripts/gpu_check.sh            (outputs under $OUT, default ./gpu_check_out)
#
# 1. every method trains and evaluates at the smoke budget on CUDA in bf16
#    (python -m kdsearch.train), RD4AD and MRKD also with --compile;
# 2. a bf16 training's anomaly maps are computed in fp32 (scripts/check_map_precision.py);
# 3. python -m kdsearch.bench --profile paper --save, into a cost file of its own (and, when
#    bench offers a teacher-feature cache, once with it on and once off);
# 4. the whole reproduction's --dry-run priced from the figures step 3 just measured.
#
# Each step has a timeout and prints one PASS or FAIL line; a failed step does not stop the
# others, and the exit code is 1 when any failed. Settings (environment):
#   GPU_CHECK_DEVICE      cuda (default) or cpu: cpu runs the same steps on the CPU in bf16
#   GPU_CHECK_METHODS     methods to train (default: rd4ad adps dskd dmdd mrkd)
#   GPU_CHECK_COMPILE     methods also trained with --compile (default: rd4ad mrkd; empty: none)
#   GPU_CHECK_BENCH_ARGS  bench's budget (default: --profile paper --seconds 4)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true
PYTHON="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
METHODS="${GPU_CHECK_METHODS:-rd4ad adps dskd dmdd mrkd}"
COMPILE="${GPU_CHECK_COMPILE-rd4ad mrkd}"
BENCH_ARGS="${GPU_CHECK_BENCH_ARGS:---profile paper --seconds 4}"
# bench --save writes to the kdsearch cache's throughput.json: a cache of this run's own,
# so the dry run below prices from what this run measured, and nothing else is changed.
COSTS="$OUT/cost_cache"
mkdir -p "$COSTS"
failed=0

# step NAME TIMEOUT_S COMMAND...: runs it, its output into $OUT/NAME.log (and shown), then PASS or FAIL.
step() {
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then
    echo "PASS $name ($((SECONDS - started)) s)"
  else
    echo "FAIL $name (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after $limit s"), $((SECONDS - started)) s; see $OUT/$name.log)"
    failed=1
  fi
}

"$PYTHON" - "$DEVICE" <<'PY' 2>&1 | tee "$OUT/environment.log"
import sys, importlib.util
import torch
device = sys.argv[1]
name = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "cpu"
def importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
present = [m for m in ("ray", "optuna", "wandb") if importable(m)]
print(f"torch {torch.__version__} · cuda {torch.version.cuda} · device {name} · "
      f"importable here (none needed): {', '.join(present) or 'none of ray, optuna, wandb'}")
PY

# 1. Every method at the smoke budget in bf16 on the device, then with --compile.
for method in $METHODS; do
  step "train_$method" 240 "$PYTHON" -m kdsearch.train --method "$method" --profile smoke --device "$DEVICE" \
    --set precision=bf16 --pretrained none --json
done
for method in $COMPILE; do
  step "train_${method}_compile" 300 "$PYTHON" -m kdsearch.train --method "$method" --profile smoke \
    --device "$DEVICE" --set precision=bf16 --pretrained none --compile --json
done

# 2. The maps of a bf16 training are computed in fp32.
step maps_fp32 180 "$PYTHON" scripts/check_map_precision.py --device "$DEVICE" --methods "${METHODS// /,}"

# 3. Throughput at the papers' budget, saved for step 4, with the teacher cache's column beside it.
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
step bench 540 env KDSEARCH_CACHE="$COSTS" "$PYTHON" -m kdsearch.bench --device "$DEVICE" $BENCH_ARGS --cache --save

# 4. The whole reproduction, priced from the figures just measured (no Ray needed for a dry run).
step reproduction_dry_run 180 env KDSEARCH_CACHE="$COSTS" "$PYTHON" -m kdsearch.ablate --paper all --axis all \
  --profile paper --dry-run --results "$OUT/results"

if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/nvidia-smi.log"
fi
echo "gpu_check: $([ "$failed" -eq 0 ] && echo "all steps passed" || echo "some steps FAILED (above)"); outputs in $OUT"
exit "$failed"
