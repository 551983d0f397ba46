#!/usr/bin/env bash
# The project's GPU checks as one short script (at most 9 minutes: the steps' limits add up to 540 s), for a machine with a CUDA GPU such
# as the device machine some tasks are lent:
#   1. python -m devbench.layout --device cuda     the precision rule's GPU case (fp32/bf16 x NCHW/NHWC step times)
#   2. python -m devbench.speed --device cuda      the trial-loop speed table, as the README shows it for the CPU
#   3. python -m study trial (demo space, cuda)    one demo trial end to end on the GPU: teacher, logit cache, metrics
# It writes at most 5 files to $OUT (default out/gpu): log.txt, layout.json, speed.json, trial_metrics.json,
# env.txt. Caches go to /tmp. It stops at the first failing step (set -e) with the log kept.
#
# Needs torch with CUDA plus this project's requirements. Only torch-pruning and thop are needed beyond what a
# plain PyTorch image holds for these three steps (no Ray, Optuna or plotly); where nothing can be installed,
# download their wheels beforehand into .whl/ (ignored by git: `echo /.whl/ >> .git/info/exclude`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torch-pruning thop
# and this script installs them into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KDSTUDY_CACHE=${KDSTUDY_CACHE:-/tmp/kdstudy-gpu-cache}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
log="$OUT/log.txt"
: > "$log"

step() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S))" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
}

"$PY" - > "$OUT/env.txt" <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
cat "$OUT/env.txt" | tee -a "$log"

step "precision and layout" 150 "$PY" -m devbench.layout --device "$DEVICE" --json "$OUT/layout.json"
step "trial-loop speed" 270 "$PY" -m devbench.speed --device "$DEVICE" --json "$OUT/speed.json"
trial_dir=/tmp/kdstudy-gpu-trial
step "demo trial" 120 "$PY" -m study trial search_spaces/demo.yaml --set "device=$DEVICE" --out "$trial_dir"
cp "$trial_dir/metrics.json" "$OUT/trial_metrics.json"
"$PY" - "$OUT/trial_metrics.json" <<'EOF' | tee -a "$log"
import json, sys
m = json.load(open(sys.argv[1]))
print("trial on", m["device_used"], "precision", m["precision_used"], "teacher", m["teacher_mode"],
      f"val_acc {m['val_acc']:.2f} test_acc {m['test_acc']:.2f} wall {m['wall_s']:.1f}s train {m['train_s']:.1f}s")
EOF
echo "== done ($(date -u +%H:%M:%S)); results in $OUT" | tee -a "$log"
