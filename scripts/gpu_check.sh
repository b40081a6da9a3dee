#!/usr/bin/env bash
# The GPU check in one call, for an offline GPU box (docs/gpu.md): installs the wheels brought along in .whl/
# (scripts/download_gpu_wheels.sh) into $TMPDIR/asym_trl_gpu_site -- only those whose package the image lacks, never
# torch; nothing is written into the repository or the image -- then runs
# benchmarks/gpu_check.py with the repository on PYTHONPATH. Results are written to OUT_DIR as they come: results.json,
# results.md, log.txt. Stops after GPU_CHECK_TIMEOUT seconds (default 290), keeping what was written.
#   scripts/gpu_check.sh OUT_DIR [--tiny] [--steps N] [--completion-length N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [--tiny] [gpu_check.py options]}
shift
PYTHON=${PYTHON:-python3}
SITE=${TMPDIR:-/tmp}/asym_trl_gpu_site
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

shopt -s nullglob
wheels=("$ROOT"/.whl/*.whl)
if ((${#wheels[@]})); then
    # a wheel's distribution name is its file name up to the first "-"; skip those the image already has
    missing=$("$PYTHON" - "${wheels[@]}" <<'PY'
import importlib.metadata as md, os, sys
for path in sys.argv[1:]:
    name = os.path.basename(path).split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(path)
PY
)
    if [[ -n $missing ]]; then
        echo "installing into $SITE: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install --quiet --upgrade --no-index --no-deps --target "$SITE" $missing
    fi
fi

export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
timeout "${GPU_CHECK_TIMEOUT:-290}" "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$OUT" "$@"
