#!/usr/bin/env bash
# Wheels of the harness for a lent GPU machine that cannot download (bench/gpu_check.sh installs
# them from .whl when it finds that folder). Run here, where pip can download:
#
#   bash bench/gpu_wheels.sh            # into .whl (git-ignored: add `/.whl/` to .git/info/exclude)
#
# CPython 3.12 on manylinux x86-64, the packages of bench/gpu_wheels.txt without their dependencies
# (the list is the closure of mlflow, hydra-core and pytorch-optimizer less what that machine has),
# and antlr4-python3-runtime 4.9.3 (hydra's parser), which has no wheel on PyPI, built from source.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.whl}"
mkdir -p "$out"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out" -r bench/gpu_wheels.txt
python3 -m pip wheel --quiet --no-deps -w "$out" antlr4-python3-runtime==4.9.3
echo "$(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
