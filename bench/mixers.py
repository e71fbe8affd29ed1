"""Mixer zoo speed and memory, each number a ratio to softmax attention measured in the same run.

For every mixer at d_model=128, batch 8, L in {256, 1024}, float32 on CPU, each (mixer, L) in a
fresh subprocess with ``--threads`` torch threads:
* forward+backward time (best of ``--repeats`` after a warm-up step) and its peak memory (peak
  RSS growth of the first step over the process's state after building the model and input),
  both / ``sa``'s. Each mixer, ``sa`` included, is timed on its own in its own subprocess:
  nothing else runs between its steps;
* the time of ``operator(x)`` + entropy-ESS of the layer, / that mixer's forward pass (best
  of ``--repeats`` where that takes under ``ESS_REPEAT_BUDGET_S``, else one call):
  every index 1..L-1 for state-space operators; for dense ones (sa, swa, hyena), whose
  ``O(L^4)`` full-index cost is the point of the fast path, 16 evenly spaced indices (marked);
* for state-space operators, the floor of any exact per-index method: one ``N x N`` SVD per
  index and channel (random matrices, timed here, spread over the threads), / the forward.

Usage: python bench/mixers.py [--lengths 256 1024] [--mixers sa gla ...] [--no-ess] [--worker-timeout S] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from common import Results, add_common_args, best_of, machine_line, setup

SUMMARY = ("Forward+backward time and peak memory of each mixer of the zoo (d_model 128, batch 8, float32), "
           "each / softmax attention's (sa), and the cost of its operator + entropy-ESS / its forward pass.")
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
    "deltanet": dict(num_heads=4, feature_dim=16),
    "gated_deltanet": dict(num_heads=4, feature_dim=16),
    "mingru": dict(),
}  # gru and lstm are measured through their Jacobian (L d_model backward passes): not at these sizes
# The peer a user would otherwise pick for s6: transformers' MambaMixer (its torch path), same
# sizes and the same weights as the s6 above (checked to give the same output before timing).
PEERS = {"hf_mamba": "s6"}
# Its torch path takes about 9 s per fwd+bwd step at L=256 here (80x s6): longer lengths are left out.
PEER_MAX_LENGTH = 256
DENSE_ESS_INDICES = 16
ESS_REPEAT_BUDGET_S = 10  # op + ESS timings that would take longer than this are taken once


def svd_seconds(state: int, sample: int = 16384) -> float:
    """One ``N x N`` float32 singular-value problem, as LAPACK does a batch (one matrix at a time
    on one thread): the least any exact per-index path pays per index and channel."""
    matrices = torch.randn(sample, state, state)
    return best_of(lambda: torch.linalg.svdvals(matrices), repeats=2, warmup=1).best / sample


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def hf_mamba_like(s6) -> torch.nn.Module:
    """transformers' MambaMixer with the weights of ``s6`` (same sizes), checked to compute the same."""
    import transformers
    from transformers.models.mamba.modeling_mamba import MambaMixer

    config = transformers.MambaConfig(hidden_size=s6.d_model, state_size=s6.d_state, expand=s6.d_inner // s6.d_model,
                                      conv_kernel=s6.conv.kernel_size, time_step_rank=s6.dt_rank,
                                      use_conv_bias=True, use_bias=False, num_hidden_layers=1)
    peer = MambaMixer(config, layer_idx=0)
    with torch.no_grad():
        for ours, theirs in ((s6.in_proj, peer.in_proj), (s6.conv.conv, peer.conv1d), (s6.x_proj, peer.x_proj),
                             (s6.dt_proj, peer.dt_proj), (s6.out_proj, peer.out_proj)):
            theirs.load_state_dict(ours.state_dict())
        peer.A_log.copy_(s6.A_log)
        peer.D.copy_(s6.D)
    x = torch.randn(2, 64, s6.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (peer.eval()(x) - s6.eval()(x)).abs().max().item()
    if gap > 1e-4:
        raise RuntimeError(f"transformers' MambaMixer with s6's weights differs from s6 by {gap:.2g}")
    return peer.train()


def measure(name: str, length: int, with_ess: bool, repeats: int, device: str = "cpu") -> dict:
    """Runs inside the subprocess: one mixer at one length (peak memory: RSS on a CPU, the
    allocator's peak on a GPU)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from ess_reg import entropy_ess
    from ess_reg.models import build_mixer

    torch.manual_seed(0)
    mixer = (hf_mamba_like(build_mixer("s6", D_MODEL, **CONFIGS["s6"])) if name == "hf_mamba"
             else build_mixer(name, D_MODEL, **CONFIGS[name])).to(device)
    if name == "hf_mamba":
        with_ess = False  # the peer has no operator: its time is the point
    x = torch.randn(BATCH, length, D_MODEL, device=device, requires_grad=True)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else peak_rss_bytes()

    def step():
        mixer.zero_grad(set_to_none=True)
        mixer(x).square().mean().backward()

    step()  # the warm-up, and the step whose peak memory is measured
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - before
    result = {"fwd_bwd_s": best_of(step, repeats, warmup=0, device=device).best, "peak_bytes": peak}
    if with_ess:
        with torch.no_grad():
            forward_s = best_of(lambda: mixer(x), repeats, warmup=1, device=device).best
            op = mixer.operator(x)
            dense = op.state_size is None  # no finite state (attention, a long convolution): 16 indices
            indices = torch.linspace(1, length - 1, DENSE_ESS_INDICES).round().long().unique() if dense else None
            if not dense and not cuda:
                spectra = op.batch_shape.numel() * (length - 1)
                result["svd_floor_s"] = spectra * svd_seconds(op.state_size) / torch.get_num_threads()

            def op_and_ess():
                entropy_ess(mixer.operator(x), indices)

            # The first call also starts the thread pool; best-of where repeating is affordable.
            ess_s = best_of(op_and_ess, repeats=1, warmup=0, device=device).best
            if ess_s * repeats <= ESS_REPEAT_BUDGET_S:
                ess_s = min(ess_s, best_of(op_and_ess, repeats, warmup=0, device=device).best)
        result.update(forward_s=forward_s, ess_s=ess_s, ess_indices="16" if dense else "all")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    import importlib.util

    peers = list(PEERS) if importlib.util.find_spec("transformers") is not None else []
    parser.add_argument("--mixers", nargs="+", default=[*CONFIGS, *peers], choices=[*CONFIGS, *PEERS],
                        help="mixers to time (default: all, and hf_mamba where transformers is installed: its "
                             "MambaMixer with s6's weights)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each workload (best is kept)")
    parser.add_argument("--no-ess", action="store_true", help="skip the operator + ESS timing")
    parser.add_argument("--worker-timeout", type=float, default=None,
                        help="seconds allowed to each (mixer, L) process; one over it is left out (default: none)")
    parser.add_argument("--worker", nargs=2, metavar=("MIXER", "L"), help=argparse.SUPPRESS)
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), not args.no_ess, args.repeats, args.device)))
        return

    mixers = ["sa", *(m for m in args.mixers if m != "sa")]  # the reference, always, and first
    results = Results("mixers", SUMMARY, {"lengths": args.lengths, "mixers": mixers, "repeats": args.repeats,
                                          "d_model": D_MODEL, "batch": BATCH, "ess": not args.no_ess,
                                          "device": args.device})
    print(f"machine: {machine_line()}")
    results.describe(f"{args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
                     f"d_model={D_MODEL}, batch={BATCH}, float32, each (mixer, L) in its own process, "
          f"times best of {args.repeats} after a warm-up")
    columns = ["mixer", "fwd+bwd ms", "time / sa", "peak MiB", "mem / sa"]
    widths = [14, 10, 9, 9, 8]
    if not args.no_ess:
        columns += ["fwd ms", "op+ESS s", "ESS / fwd", "indices", "SVDs / fwd"]
        widths += [8, 9, 9, 8, 10]
    for length in args.lengths:
        measured = {}
        for name in mixers:
            if name in PEERS and length > PEER_MAX_LENGTH:
                results.note(f"L={length}: {name} left out (longer than {PEER_MAX_LENGTH}: minutes per step)")
                continue
            cmd = [sys.executable, __file__, "--worker", name, str(length), "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--device", args.device]
            if args.no_ess:
                cmd.append("--no-ess")
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
            except subprocess.TimeoutExpired:
                results.note(f"{name} at L={length}: over its {args.worker_timeout:g} s (--worker-timeout), left out")
                print(f"  {name} at L={length}: over {args.worker_timeout:g} s, left out", file=sys.stderr)
                continue
            if out.returncode:
                results.note(f"{name} at L={length} failed: {out.stderr.strip().splitlines()[-1:]}")
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            measured[name] = json.loads(out.stdout.strip().splitlines()[-1])
            # the raw figures as they come: a run stopped by a time limit still leaves them
            print(f"  measured {name} at L={length}: {json.dumps(measured[name])}", file=sys.stderr)
        if "sa" not in measured:
            results.note(f"L={length}: no ratios, the reference sa was not measured")
            continue
        base = measured["sa"]
        key = ["time / sa", "mem / sa"] + ([] if args.no_ess else ["ESS / fwd"])
        table = results.table(columns, title=f"L={length}", key=key, widths=widths)
        for name, r in measured.items():
            cells = [name, f"{1e3 * r['fwd_bwd_s']:.1f}", f"{r['fwd_bwd_s'] / base['fwd_bwd_s']:.2f}x",
                     f"{r['peak_bytes'] / 2**20:.1f}", f"{r['peak_bytes'] / max(base['peak_bytes'], 1):.2f}x"]
            if not args.no_ess and "forward_s" not in r:  # the peer: no operator, no ESS
                cells += ["-"] * 5
            elif not args.no_ess:
                floor = f"{r['svd_floor_s'] / r['forward_s']:.1f}x" if "svd_floor_s" in r else "-"
                cells += [f"{1e3 * r['forward_s']:.1f}", f"{r['ess_s']:.2f}", f"{r['ess_s'] / r['forward_s']:.1f}x",
                          r["ess_indices"], floor]
            table.add(*cells, mixer=name, length=length, **r)
        for peer, ours in PEERS.items():
            if peer in measured and ours in measured:
                ratio = measured[peer]["fwd_bwd_s"] / measured[ours]["fwd_bwd_s"]
                results.note(f"L={length}: {peer} (same weights) takes {ratio:.1f}x the fwd+bwd time of {ours}")
    results.write(args.json)


if __name__ == "__main__":
    main()
