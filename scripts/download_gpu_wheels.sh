#!/usr/bin/env bash
# On a machine with network: download into .whl/ (git-ignored) the wheels that scripts/gpu_check.sh installs on the
# offline GPU box, whose image has Python 3.12, a CUDA build of torch, transformers 5.17, accelerate and peft (with
# their own dependencies: numpy, huggingface_hub, tokenizers, safetensors, psutil, fsspec, jinja2, ...).
# What TRL 1.16 needs beyond that, pinned, binary only, for x86-64 Linux; never torch. The project itself is not a
# wheel: gpu_check.sh puts the repository on PYTHONPATH. Then DeepSpeed for the check's ZeRO-2/3 section: PyPI has
# only its source, so it is built here into a pure-Python wheel with no compiled ops (DS_BUILD_OPS=0; this needs torch
# in $PYTHON), plus the dependencies the image lacks. 22 wheels, 59 MiB for Python 3.12 (docs/gpu.md).
#   scripts/download_gpu_wheels.sh            # for Python 3.12
#   PYTHON_VERSION=3.11 scripts/download_gpu_wheels.sh   # e.g. to rehearse on a machine with another Python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
    --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    trl==1.16.0 \
    datasets==4.7.0 pyarrow==21.0.0 pandas==3.0.0 python-dateutil==2.9.0.post0 six==1.17.0 \
    dill==0.4.0 multiprocess==0.70.18 xxhash==3.6.0 \
    requests==2.32.5 urllib3==2.5.0 charset-normalizer==3.4.4 \
    hjson==3.1.0 py-cpuinfo==9.0.0 msgpack==1.2.4 ninja==1.13.2 einops==0.8.2 \
    pydantic==2.11.7 pydantic-core==2.33.2 annotated-types==0.7.0 typing-inspection==0.4.1
src=$(mktemp -d)
"$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: --dest "$src" deepspeed==0.19.8
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir .whl "$src"/deepspeed-*.tar.gz
rm -rf "$src"
ls -l .whl
du -ch .whl/*.whl | tail -1
