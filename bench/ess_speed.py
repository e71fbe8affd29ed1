"""ESS speed: the finite-state fast paths and the batched dense path against the per-index loop.

Every ratio is measured in one run on one machine, each side timed on its own:

* fast vs loop, per operator kind (``--operators``): entropy-ESS at every index 1..L-1 of one
  random StateSpaceOperator (N=16, 8 channels, float64, decays log-uniform in [-20, -1e-4] per
  step) or DeltaRuleOperator (N=16, 8 heads, normalized keys, beta in (0, 1), gates in
  [exp(-0.3), 1]), fast path
  (``method="state_space"``, best of ``--repeats`` after a warm-up) against one SVD per index of
  the materialized T (``method="loop"``, best of ``--loop-repeats``, one by default: it takes
  minutes at L=1024); also the fast path's forward+backward time and the max |difference| of the
  two entropy-ESS tensors.
* dense batched vs loop at the smallest length: ``method="dense"`` against the same loop timing.
  The dense path spreads the per-index SVDs over ``--threads`` workers: on one thread it does
  the loop's work.

Every path runs once on a small operator first, so that no timing pays for first-call start-up.

Usage: python bench/ess_speed.py [--lengths 256 512 1024] [--repeats 3] [--loop-repeats 1] [--threads N]
The loop costs O(L^4): seconds at L=512, minutes at L=1024 on one thread of a 2-core CPU. With
more threads than free cores (a shared machine) it runs many times slower.
"""

from __future__ import annotations

import argparse

import torch

from common import Results, add_common_args, best_of, machine_line, setup
from ess_reg import StateSpaceOperator, entropy_ess
from ess_reg.operators import DeltaRuleOperator

SUMMARY = ("Entropy-ESS at every index of a random state-space and delta-rule operator (N=16, 8 channels, "
           "float64): each fast path against one SVD per index of the materialized operator (the loop), "
           "and the batched dense path against the loop.")


def make_operator(length: int, state: int, channels: int, seed: int = 0, device: str = "cpu") -> StateSpaceOperator:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(channels, length, state, generator=g, dtype=torch.float64)
    log_decay = -torch.exp(u * torch.log(torch.tensor(20.0)) + (1 - u) * torch.log(torch.tensor(1e-4)))
    B = torch.randn(channels, length, state, generator=g, dtype=torch.float64)
    C = torch.randn(channels, length, state, generator=g, dtype=torch.float64)
    return StateSpaceOperator(log_decay.to(device), B.to(device), C.to(device))


def make_delta_rule(length: int, state: int, channels: int, seed: int = 0, device: str = "cpu") -> DeltaRuleOperator:
    g = torch.Generator().manual_seed(seed)
    K = torch.nn.functional.normalize(torch.randn(channels, length, state, generator=g, dtype=torch.float64), dim=-1)
    Q = torch.randn(channels, length, state, generator=g, dtype=torch.float64)
    beta = torch.rand(channels, length, generator=g, dtype=torch.float64)
    log_alpha = -0.3 * torch.rand(channels, length, generator=g, dtype=torch.float64)
    return DeltaRuleOperator(*(t.to(device) for t in (log_alpha, beta, K, Q)))


OPERATORS = {"state_space": make_operator, "delta_rule": make_delta_rule}


def with_leaf(op):
    """The operator with a leaf factor that needs gradients (the fast path's backward)."""
    if op.kind == "delta_rule":
        leaf = op.Q.detach().requires_grad_()
        return DeltaRuleOperator(op.log_alpha.squeeze(-1), op.beta.squeeze(-1), op.K, leaf), leaf
    leaf = op.B.detach().requires_grad_()
    return StateSpaceOperator(op.log_decay, leaf, op.C), leaf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the fast paths (best is kept)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed calls of the loop (best is kept)")
    parser.add_argument("--operators", nargs="+", choices=list(OPERATORS), default=list(OPERATORS),
                        help="operator kinds whose fast path is timed (default: all)")
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    results = Results("ess_speed", SUMMARY, {"lengths": args.lengths, "state": args.state,
                                             "channels": args.channels, "repeats": args.repeats,
                                             "operators": args.operators, "device": args.device,
                                             "loop_repeats": args.loop_repeats})
    print(f"machine: {machine_line()}")
    results.describe(f"N={args.state}, {args.channels} channels, float64, entropy-ESS at every index 1..L-1; "
          f"fast paths best of {args.repeats}, loop best of {args.loop_repeats}")

    # Warm up every path once (first-call allocations and thread start-up are not what we measure).
    for kind in args.operators:
        warm = OPERATORS[kind](64, args.state, 2, device=args.device)
        for method in ("loop", "dense", "state_space"):
            entropy_ess(warm, method=method)

    loops = {}
    for kind in args.operators:
        fast_table = results.table(["L", "loop s", "fast s", "fast/loop speedup", "fast fwd+bwd s", "max |dESS|"],
                                   title=f"{kind.replace('_', '-')} fast path vs the per-index loop",
                                   key=["fast/loop speedup"], widths=[6, 9, 9, 18, 15, 11])
        for length in args.lengths:
            op = OPERATORS[kind](length, args.state, args.channels, device=args.device)
            T = op.materialize()  # outside the loop's timing: the baseline is only its SVDs
            loop = best_of(lambda: entropy_ess(T, method="loop"), args.loop_repeats, warmup=0, device=args.device)
            fast = best_of(lambda: entropy_ess(op, method="state_space"), args.repeats, warmup=1, device=args.device)

            def fast_backward():
                built, leaf = with_leaf(op)
                entropy_ess(built).sum().backward()
                return leaf.grad

            grad = best_of(fast_backward, args.repeats, warmup=1, device=args.device)
            diff = (fast.result - loop.result).abs().max().item()
            loops.setdefault(length, (T, loop))
            fast_table.add(str(length), f"{loop.best:.2f}", f"{fast.best:.3f}", f"{loop.best / fast.best:.0f}x",
                           f"{grad.best:.3f}", f"{diff:.1e}", length=length, loop_s=loop.best, fast_s=fast.best,
                           fast_fwd_bwd_s=grad.best, max_diff=diff)
        rows = fast_table.data
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            growth = (last["loop_s"] / last["fast_s"]) / (first["loop_s"] / first["fast_s"])
            results.note(f"{kind}: speedup grows {growth:.1f}x from L={first['length']} to L={last['length']} "
                         f"({last['length'] / first['length']:.0f}x longer)")

    length = args.lengths[0]
    T, loop = loops[length]
    dense = best_of(lambda: entropy_ess(T, method="dense"), args.repeats, warmup=1, device=args.device)
    diff = (dense.result - loop.result).abs().max().item()
    dense_table = results.table(["L", "loop s", "dense s", "loop/dense speedup", "max |dESS|"],
                                title="dense batched vs the per-index loop (materialized T)",
                                key=["loop/dense speedup"], widths=[6, 9, 9, 19, 11])
    dense_table.add(str(length), f"{loop.best:.2f}", f"{dense.best:.2f}", f"{loop.best / dense.best:.2f}x",
                    f"{diff:.1e}", length=length, loop_s=loop.best, dense_s=dense.best, max_diff=diff)
    threads = torch.get_num_threads()
    results.note(f"the dense path spreads the per-index SVDs over the torch threads ({threads} here)"
                 + (": on one thread it does the loop's work" if threads == 1 else ""))
    results.write(args.json)


if __name__ == "__main__":
    main()
