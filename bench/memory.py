"""Peak memory of building an operator and of ``hankel_svdvals`` against ``memory_budget``.

For each input kind, L in {512, 1024, 2048} and memory budget in {16, 64, 256} MiB (float32 on CPU,
``--channels`` channels, 16 evenly spaced indices: the dense methods cost ``O(L^4)`` over every
index), one fresh subprocess measures:

* (a) build: the peak memory growth of constructing the operator from tensors already in memory
  (for a dense ``T``, its validation: finite, causal), / the size of those tensors;
* (b) spectra: the peak memory growth of ``hankel_svdvals(op, indices, memory_budget=budget)``,
  / the budget (the goal: at most 1.25), and its wall time.

Kinds: ``dense`` (``DenseOperator`` of a random lower-triangular ``T``), ``dense-bf16`` (the same
``T`` in bfloat16: its blocks are converted to float32 one batch chunk at a time), ``ssm-dense``
(a ``StateSpaceOperator``, N=16, with ``method="dense"``: ``T`` materialized for a group of
channels at a time, in row blocks) and ``ssm`` (the same operator on its own ``state_space`` path).

How peak growth is measured: right before a step the worker returns freed heap memory to the
system (glibc ``malloc_trim``, so that the step cannot hide in memory freed earlier), resets the
kernel's high-water mark of its resident set (writes ``5`` to ``/proc/self/clear_refs``) and
reads ``VmRSS`` from ``/proc/self/status``; after the step it reads ``VmHWM``: growth = VmHWM -
VmRSS.  This is the exact peak, not a sample.  Where ``clear_refs`` cannot be written it falls
back to ``ru_maxrss`` before/after (then a step's growth shows only above the process's
earlier peak; the header says which was used).  Each worker first runs one small call of its
kind (L=256, 2 channels, same budget: big enough for LAPACK's blocked code paths), so that
one-time start-up (library code paged in, lazy imports, LAPACK's buffers, the thread pool) is
charged to no case; that call's growth is the fixed constant reported under the table.  The
measured growth includes the returned spectra (16 indices: under 0.1 MiB).

Usage: python bench/memory.py [--lengths 512 1024 2048] [--budgets 16 64 256] [--kinds ...]
       [--channels 4] [--threads 1]   (--threads: torch threads per worker, default 1)
Peak use of the whole run is about 0.3 GiB.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys

from common import Results, add_common_args, best_of, machine_line, setup

KINDS = ("dense", "dense-bf16", "ssm-dense", "ssm")
STATE = 16
NUM_INDICES = 16
WARMUP_LENGTH = 256  # large enough for LAPACK's blocked code paths (paged in once per process)
MiB = 2**20
SUMMARY = ("Peak memory growth of building an operator / its input tensors, and of hankel_svdvals at 16 indices "
           "/ its memory_budget (the goal: at most 1.25), float32 on CPU, each case in a fresh process.")


class PeakMeter:
    """Peak resident-set growth of a step (see the module docstring)."""

    def __init__(self):
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self.exact = self._reset()

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if self.exact:
            self._reset()
            self._base = self._status("VmRSS")
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def growth(self) -> int:
        if self.exact:
            return max(0, self._status("VmHWM") - self._base)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base)


def make_inputs(kind: str, length: int, channels: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    if kind.startswith("dense"):
        T = torch.randn(channels, length, length, generator=g).tril_()
        if kind == "dense-bf16":
            T = T.to(torch.bfloat16)
        return (T,)
    u = torch.rand(channels, length, STATE, generator=g)
    log_decay = -torch.exp(u * torch.log(torch.tensor(5.0)) + (1 - u) * torch.log(torch.tensor(1e-3)))
    B = torch.randn(channels, length, STATE, generator=g)
    C = torch.randn(channels, length, STATE, generator=g)
    return log_decay, B, C


def build(kind: str, inputs):
    from ess_reg import DenseOperator, StateSpaceOperator

    return DenseOperator(*inputs) if kind.startswith("dense") else StateSpaceOperator(*inputs)


def method_of(kind: str) -> str:
    return {"ssm-dense": "dense", "ssm": "state_space"}.get(kind, "dense")


def measure(kind: str, length: int, budget: int, channels: int, threads: int) -> dict:
    """Runs inside the subprocess: one case."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import torch

    torch.set_num_threads(threads)
    from ess_reg import hankel_svdvals

    meter = PeakMeter()
    method = method_of(kind)
    inputs = make_inputs(kind, length, channels)
    indices = torch.linspace(1, length - 1, NUM_INDICES).round().long().unique()
    with torch.no_grad():
        meter.start()  # one-time start-up, not a case's
        warm_inputs = make_inputs(kind, WARMUP_LENGTH, 2, seed=1)
        hankel_svdvals(build(kind, warm_inputs), method=method, memory_budget=budget)
        del warm_inputs
        warmup = meter.growth()

        meter.start()
        op = build(kind, inputs)
        build_growth = meter.growth()

        meter.start()
        try:  # one call: its peak is the measurement (a repeat would find the memory freed by the first)
            timing = best_of(lambda: hankel_svdvals(op, indices, method=method, memory_budget=budget),
                             repeats=1, warmup=0)
        except ValueError as err:  # a budget too small for one block: refused up front
            return {"refused": str(err), "input_bytes": sum(t.numel() * t.element_size() for t in inputs),
                    "build_bytes": build_growth, "warmup_bytes": warmup, "exact": meter.exact}
        sigma, seconds = timing.result, timing.best
        spectra_growth = meter.growth()
    return {
        "input_bytes": sum(t.numel() * t.element_size() for t in inputs),
        "build_bytes": build_growth,
        "spectra_bytes": spectra_growth,
        "output_bytes": sigma.numel() * sigma.element_size(),
        "warmup_bytes": warmup,
        "seconds": seconds,
        "exact": meter.exact,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 256], help="memory_budget values, MiB")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "L", "BUDGET"), help=argparse.SUPPRESS)
    add_common_args(parser, threads=1)  # torch threads (and SVD workers) per worker
    args = parser.parse_args()
    if args.worker:
        kind, length, budget = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(measure(kind, length, budget, args.channels, args.threads)))
        return

    setup(args)
    results = Results("memory", SUMMARY, {"lengths": args.lengths, "budgets_mib": args.budgets, "kinds": args.kinds,
                                          "channels": args.channels, "state": STATE, "indices": NUM_INDICES})
    print(f"machine: {machine_line()}")
    results.describe(f"float32 (dense-bf16: bfloat16 T), {args.channels} channels, N={STATE}, "
          f"{NUM_INDICES} evenly spaced indices, each case in a fresh process with {args.threads} thread(s)")
    table = results.table(["kind", "L", "input MiB", "build MiB", "build/input", "budget MiB", "spectra MiB",
                           "/budget", "seconds"], key=["build/input", "/budget"],
                          widths=[11, 5, 9, 9, 11, 10, 11, 8, 8])
    measured, refusals = [], []
    for kind in args.kinds:
        for length in args.lengths:
            for budget_mib in args.budgets:
                cmd = [sys.executable, __file__, "--worker", kind, str(length), str(budget_mib * MiB),
                       "--channels", str(args.channels), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    results.note(f"{kind} at L={length}, budget {budget_mib} MiB failed: "
                                 f"{out.stderr.strip().splitlines()[-1:]}")
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r.update(kind=kind, length=length, budget=budget_mib * MiB)
                measured.append(r)
                cells = [kind, str(length), f"{r['input_bytes'] / MiB:.1f}", f"{r['build_bytes'] / MiB:.1f}",
                         f"{r['build_bytes'] / r['input_bytes']:.2f}x", str(budget_mib)]
                if "refused" in r:
                    refusals.append(r)
                    cells += ["refused", "-", "-"]
                else:
                    cells += [f"{r['spectra_bytes'] / MiB:.1f}", f"{r['spectra_bytes'] / r['budget']:.2f}x",
                              f"{r['seconds']:.2f}"]
                table.add(*cells, **r)
    if not measured:
        results.write(args.json)
        return
    print()
    results.note("peak measured as "
                 f"{'VmHWM after a reset (exact)' if all(r['exact'] for r in measured) else 'ru_maxrss'}")
    results.note(f"fixed constant (growth of each worker's first call, L={WARMUP_LENGTH}, charged to no case; mostly "
                 "library code paged in): " + ", ".join(
                     f"{kind} {min(r['warmup_bytes'] for r in measured if r['kind'] == kind) / MiB:.1f}-"
                     f"{max(r['warmup_bytes'] for r in measured if r['kind'] == kind) / MiB:.1f} MiB"
                     for kind in args.kinds if any(r["kind"] == kind for r in measured)))
    for r in refusals:
        results.note(f"refused: {r['kind']}, L={r['length']}, budget {r['budget'] // MiB} MiB: {r['refused']}")
    done = [r for r in measured if "refused" not in r]
    if done:
        worst = max(done, key=lambda r: r["spectra_bytes"] / r["budget"])
        results.note(f"worst spectra/budget: {worst['spectra_bytes'] / worst['budget']:.2f}x "
                     f"({worst['kind']}, L={worst['length']}, budget {worst['budget'] // MiB} MiB); "
                     f"largest process peak: {max(r['max_rss_bytes'] for r in done) / MiB:.0f} MiB")
    results.write(args.json)


if __name__ == "__main__":
    main()
