#!/usr/bin/env bash
# The GPU check: one prepared script for a machine with a CUDA GPU.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # OUT_DIR: default $OUT, else runs/gpu_check
#
# 1. the CUDA tests, every test marked gpu: tests/test_cuda.py (spectra, the delta rule, the dense path's
#    accuracy, the s6 / gla / deltanet mixers on CUDA against the CPU, a bf16 run with the penalty) and
#    the CUDA run of tests/harness/test_train.py;
# 2. bench/analyze_llm.py --preset 1b: analyze on a 1.10B Llama (eager) and a 1.37B Mamba2 at L = 2048,
#    16 indices and 4 heads per layer, against one forward pass, into OUT_DIR/analyze_llm.txt and .json;
#    then the Llama again with --certified 1e-3 (its blocks through the Gramian where it certifies);
# 3. bench/report.py --gpu: the mixers (L = 1024) and the ESS fast paths (L = 256, 512) on cuda,
#    into OUT_DIR/benchmarks_gpu.md with the card's name (docs/benchmarks_gpu.md keeps the tables).
# Sized for a lent device's budget (15 minutes in all, a machine's start included; at most 10 a
# command): the steps' limits add up to 580 s, so call it with timeout_s=595. Each step has its
# own limit, so that one stuck step leaves the others' results (the benches print their figures as
# they come). Six files come back under OUT_DIR (the device returns at most 8).
# A bare device machine lacks the harness: where a folder .whl holds its wheels (hydra-core,
# omegaconf, antlr4, mlflow and what they need that the machine lacks, pytorch-optimizer), they are
# installed first (bash bench/gpu_wheels.sh makes them, here, where pip can download).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if [ -d .whl ] && ! "$py" -c "import hydra, mlflow" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$py" -c "import ess_reg.models" 2>/dev/null; then  # a bare machine: the project itself, no dependency fetched
  "$py" -m pip install -q --no-deps --no-build-isolation -e . || { echo "gpu_check: cannot install ess-reg"; exit 1; }
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$out/gpu.txt"

echo "== CUDA tests (every test marked gpu)"
targets=(tests/test_cuda.py)
if "$py" -c "import hydra, mlflow" 2>/dev/null; then  # the harness's own CUDA runs, where ess-reg[train] is installed
  targets=(tests/test_cuda.py tests/harness/test_train.py)  # the only files with tests marked gpu: collecting the
else                                                          # whole suite would import what a bare machine lacks
  echo "(hydra-core / mlflow not installed: the training runs on CUDA are skipped; carry them as wheels to run them)"
fi
timeout 60 "$py" -m pytest -q -p no:cacheprovider -o addopts=-ra -m gpu "${targets[@]}" 2>&1 | tee "$out/tests.txt"
tests=$?

echo "== analyze on 1B-parameter models (L = 2048): a Llama with eager attention and a Mamba2"
# 16 indices and 4 of 32 heads per layer fit this check's time (the cost is in proportion to both:
# every head at 64 indices is 32x this, minutes of cuSOLVER SVDs of blocks up to 1024 x 1024)
timeout 120 "$py" bench/analyze_llm.py --preset 1b --indices 16 --heads 4 --repeats 1 --device cuda --threads 4 \
  --json "$out/analyze_llm.json" 2>&1 | tee "$out/analyze_llm.txt"
llm=$?
echo "== the same Llama, certified to 1e-3 (the Gramian's eigenvalues with their certificate, where they suffice)"
timeout 60 "$py" bench/analyze_llm.py --preset 1b --models llama --certified 1e-3 --indices 16 --heads 4 --repeats 1 \
  --device cuda --threads 4 2>&1 | tee -a "$out/analyze_llm.txt"

echo "== benches"
timeout 340 "$py" bench/report.py --gpu --threads 4 --out "$out/benchmarks_gpu.md" 2>&1 | tee "$out/bench.txt"
benches=$?

echo "== summary: tests exit $tests, benches exit $benches, analyze_llm exit $llm"
tail -n 3 "$out/tests.txt"
cat "$out/benchmarks_gpu.md" 2>/dev/null
exit $(( tests || benches || llm ))
