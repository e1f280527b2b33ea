#!/usr/bin/env bash
# Wheels of the requirements.txt packages that the lent GPU machine's image lacks, for its Python
# 3.12 on manylinux x86_64, into .whl/ (git-ignored; about 11 MiB). Carry `.whl` in a device call
# and start its command with (from the device tool's README):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
# jax, flax, optax, orbax-checkpoint, numpy, etils, pillow, scikit-image, ... are in the image
# (other versions than requirements.txt pins; the code runs on both).
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
