#!/usr/bin/env bash
# For a GPU machine without internet access (e.g. an air-gapped cluster): run this on a machine
# with internet access. It downloads the wheels of the requirements.txt packages that such a
# machine's image typically lacks, for Python 3.12 on manylinux x86_64, into .whl/ (git-ignored;
# about 11 MiB); edit MISSING for another image. Copy `.whl` to the GPU machine and start each job
# there with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
# The image is assumed to have jax (with CUDA), flax, optax, orbax-checkpoint, numpy, etils, pillow,
# scikit-image, ... (other versions than the requirements.txt pins work too).
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING="clu tensorflow-datasets grain tensorboardX array_record dm-tree docstring_parser
  googleapis-common-protos immutabledict importlib_resources ml_collections portpicker promise
  simple-parsing tensorflow-metadata termcolor toml"
mkdir -p .whl
for name in $MISSING; do
  pin=$(grep -i "^${name}==" requirements.txt)
  if [ "$name" = promise ]; then  # an sdist only on PyPI: build its pure-Python wheel here
    python3 -m pip wheel -q --no-deps -w .whl "$pin"
    continue
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$pin"
done
ls .whl && du -sh .whl
