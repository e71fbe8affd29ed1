"""Mixer zoo speed and memory, each number a ratio to softmax attention measured in the same run.

For every mixer at d_model=128, batch 8, L in {256, 1024}, float32 on CPU:
* forward+backward time and its peak memory (each (mixer, L) runs in a fresh subprocess; peak
  RSS growth over the process's state after building the model and input), both / ``sa``'s.
  The time ratio comes from ``sa`` timed in the same subprocess, its steps interleaved with the
  mixer's, so that a change in the machine's load (a shared host's cache and memory bandwidth)
  hits both sides of the ratio alike;
* the time of ``operator(x)`` + entropy-ESS of the layer, / that mixer's forward pass (best
  of ``--repeats`` where that takes under ``ESS_REPEAT_BUDGET_S``, else one call):
  every index 1..L-1 for state-space operators; for dense ones (sa, swa, hyena), whose
  ``O(L^4)`` full-index cost is the point of the fast path, 16 evenly spaced indices (marked);
* for state-space operators, the floor of any exact per-index method: one ``N x N`` SVD per
  index and channel (random matrices, timed here, spread over the threads), / the forward.

Usage: python bench/mixers.py [--lengths 256 1024] [--mixers sa gla ...] [--no-ess]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

D_MODEL, BATCH = 128, 8
CONFIGS = {
    "sa": dict(num_heads=4),
    "swa": dict(num_heads=4, window=64),
    "la": dict(num_heads=4, feature_dim=16),
    "wla": dict(num_heads=4, feature_dim=16),
    "gla": dict(num_heads=4, feature_dim=16),
    "s6": dict(d_state=16),
    "s4d": dict(d_state=16),
    "hyena": dict(),
}
DENSE_ESS_INDICES = 16
ESS_REPEAT_BUDGET_S = 10  # op + ESS timings that would take longer than this are taken once


def best_time(fn, repeats: int) -> float:
    return best_times([fn], repeats)[0]


def best_times(fns, repeats: int) -> list[float]:
    """Best of ``repeats`` for each function, their calls interleaved round by round."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def svd_seconds(state: int, sample: int = 16384) -> float:
    """One ``N x N`` float32 singular-value problem, as LAPACK does a batch (one matrix at a time
    on one thread): the least any exact per-index path pays per index and channel."""
    matrices = torch.randn(sample, state, state)
    torch.linalg.svdvals(matrices[:64])
    return best_time(lambda: torch.linalg.svdvals(matrices), 2) / sample


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(name: str, length: int, with_ess: bool, repeats: int) -> dict:
    """Runs inside the subprocess: one mixer at one length."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from ess_reg import entropy_ess
    from ess_reg.models import build_mixer

    torch.manual_seed(0)
    mixer = build_mixer(name, D_MODEL, **CONFIGS[name])
    x = torch.randn(BATCH, length, D_MODEL, requires_grad=True)
    before = peak_rss_bytes()

    def step(m=mixer):
        m.zero_grad(set_to_none=True)
        m(x).square().mean().backward()

    step()
    peak = peak_rss_bytes() - before
    reference = build_mixer("sa", D_MODEL, **CONFIGS["sa"])  # after the peak: its memory is not counted
    mixer_s, sa_s = best_times([step, lambda: step(reference)], repeats)
    result = {"fwd_bwd_s": mixer_s, "sa_fwd_bwd_s": sa_s, "peak_bytes": peak}
    if with_ess:
        with torch.no_grad():
            forward_s = best_time(lambda: mixer(x), repeats)
            op = mixer.operator(x)
            dense = op.__class__.__name__ == "DenseOperator"
            indices = torch.linspace(1, length - 1, DENSE_ESS_INDICES).round().long().unique() if dense else None
            if not dense:
                spectra = op.batch_shape.numel() * (length - 1)
                result["svd_floor_s"] = spectra * svd_seconds(op.state_size) / torch.get_num_threads()

            def op_and_ess():
                entropy_ess(mixer.operator(x), indices)

            start = time.perf_counter()
            op_and_ess()
            ess_s = time.perf_counter() - start
            # The first call also starts the thread pool; best-of where repeating is affordable.
            if ess_s * repeats <= ESS_REPEAT_BUDGET_S:
                ess_s = min(ess_s, best_time(op_and_ess, repeats))
        result.update(forward_s=forward_s, ess_s=ess_s, ess_indices="16" if dense else "all")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--mixers", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-ess", action="store_true", help="skip the operator + ESS timing")
    parser.add_argument("--worker", nargs=2, metavar=("MIXER", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), not args.no_ess, args.repeats)))
        return

    mixers = args.mixers if "sa" in args.mixers else ["sa", *args.mixers]
    print(f"d_model={D_MODEL}, batch={BATCH}, float32, CPU: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    for length in args.lengths:
        results = {}
        for name in mixers:
            cmd = [sys.executable, __file__, "--worker", name, str(length), "--repeats", str(args.repeats)]
            if args.no_ess:
                cmd.append("--no-ess")
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{name} at L={length} failed:\n{out.stderr[-2000:]}")
                continue
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  measured {name} at L={length}", file=sys.stderr)
        base = results["sa"]
        print(f"\nL={length}")
        header = f"{'mixer':<7} {'fwd+bwd ms':>10} {'time / sa':>9} {'peak MiB':>9} {'mem / sa':>8}"
        if not args.no_ess:
            header += f" {'fwd ms':>8} {'op+ESS s':>9} {'ESS / fwd':>9} {'indices':>8} {'SVDs / fwd':>10}"
        print(header)
        for name, r in results.items():
            line = (f"{name:<7} {1e3 * r['fwd_bwd_s']:>10.1f} {r['fwd_bwd_s'] / r['sa_fwd_bwd_s']:>8.2f}x "
                    f"{r['peak_bytes'] / 2**20:>9.1f} {r['peak_bytes'] / max(base['peak_bytes'], 1):>7.2f}x")
            if not args.no_ess:
                floor = f"{r['svd_floor_s'] / r['forward_s']:>9.1f}x" if "svd_floor_s" in r else f"{'-':>10}"
                line += (f" {1e3 * r['forward_s']:>8.1f} {r['ess_s']:>9.2f} {r['ess_s'] / r['forward_s']:>8.1f}x "
                         f"{r['ess_indices']:>8} {floor}")
            print(line)


if __name__ == "__main__":
    main()
