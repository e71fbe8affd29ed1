"""ESS speed: the state-space fast path and the batched dense path against the per-index loop.

Every ratio is measured side by side in one run on one machine:

* fast vs loop: entropy-ESS at every index 1..L-1 of one random StateSpaceOperator
  (N=16, 8 channels, float64, decays log-uniform in [-20, -1e-4] per step), fast path
  (``method="state_space"``) against one SVD per index of the materialized T (``method="loop"``);
  also the max |difference| of the two entropy-ESS tensors.
* dense batched vs loop at the smallest length: ``method="dense"`` against ``method="loop"``.

Usage: python bench/ess_speed.py [--lengths 256 512 1024] [--repeats 3]
The loop at L=1024 takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from common import cpu_name
from ess_reg import StateSpaceOperator, entropy_ess


def make_operator(length: int, state: int, channels: int, seed: int = 0) -> StateSpaceOperator:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(channels, length, state, generator=g, dtype=torch.float64)
    log_decay = -torch.exp(u * torch.log(torch.tensor(20.0)) + (1 - u) * torch.log(torch.tensor(1e-4)))
    B = torch.randn(channels, length, state, generator=g, dtype=torch.float64)
    C = torch.randn(channels, length, state, generator=g, dtype=torch.float64)
    return StateSpaceOperator(log_decay, B, C)


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out, best = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of the fast paths (best is kept)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"N={args.state}, {args.channels} channels, float64, entropy-ESS at every index 1..L-1\n")

    # Warm up every path once (first-call allocations and thread start-up are not what we measure).
    warm = make_operator(64, args.state, 2)
    for method in ("loop", "dense", "state_space"):
        entropy_ess(warm, method=method)

    rows = []
    print(f"{'L':>6} {'loop s':>9} {'fast s':>9} {'fast/loop speedup':>18} {'fast fwd+bwd s':>15} {'max |dESS|':>11}")
    for length in args.lengths:
        op = make_operator(length, args.state, args.channels)
        T = op.materialize()  # outside the loop's timing: the baseline is only its SVDs
        loop_s, loop_ess = best_time(lambda: entropy_ess(T, method="loop"), 1)
        fast_s, fast_ess = best_time(lambda: entropy_ess(op, method="state_space"), args.repeats)

        def fast_backward():
            leaf = op.B.detach().requires_grad_()
            entropy_ess(StateSpaceOperator(op.log_decay, leaf, op.C)).sum().backward()
            return leaf.grad

        grad_s, _ = best_time(fast_backward, args.repeats)
        diff = (fast_ess - loop_ess).abs().max().item()
        rows.append((length, loop_s, fast_s))
        print(f"{length:>6} {loop_s:>9.2f} {fast_s:>9.3f} {loop_s / fast_s:>17.0f}x {grad_s:>15.3f} {diff:>11.1e}")
    if len(rows) > 1:
        (l0, a0, b0), (l1, a1, b1) = rows[0], rows[-1]
        growth = (a1 / b1) / (a0 / b0)
        print(f"\nspeedup grows {growth:.1f}x from L={l0} to L={l1} ({l1 / l0:.0f}x longer)")

    length = args.lengths[0]
    op = make_operator(length, args.state, args.channels)
    T = op.materialize()
    loop_s, loop_ess = best_time(lambda: entropy_ess(T, method="loop"), args.repeats)
    dense_s, dense_ess = best_time(lambda: entropy_ess(T, method="dense"), args.repeats)
    diff = (dense_ess - loop_ess).abs().max().item()
    print(f"\ndense batched vs loop at L={length} (materialized T): loop {loop_s:.2f} s, dense {dense_s:.2f} s, "
          f"loop/dense = {loop_s / dense_s:.2f}x, max |dESS| = {diff:.1e}")


if __name__ == "__main__":
    main()
