"""``ess_reg.analyze`` on language models of real size: its time and memory against one forward pass.

Randomly initialised Hugging Face models built from configs (nothing downloaded): a Llama-style
decoder with eager attention and a Mamba2, in float32, batch 1, measured by ``analyze`` at
``--indices`` evenly spaced indices of every layer (per head). Presets:

* ``1b`` (for a GPU): a Llama of 16 layers, hidden 2048, 32 heads (8 key-value heads), 1.10B
  parameters, and a Mamba2 of 48 layers, hidden 2048, state 128, 1.37B, at L = 2048;
* ``cpu`` (runs here): the same shapes scaled down (4 layers, hidden 256) at L = 512.

Each side is timed on its own: the forward pass (no gradients) best of ``--repeats`` after a
warm-up; ``analyze`` the same, except at ``1b`` where one timed call follows no warm-up (a call
takes minutes; the forward's warm-up has already built the kernels). Peak memory: the GPU's
allocator peak of each side on CUDA, the process's peak resident size on the CPU.

``--length`` overrides the preset's length (the CPU preset at the 1B one's L = 2048); ``--heads N``
measures N heads per layer (``analyze(channel_limit=N)``), a budget whose cost falls in proportion.

Usage: python bench/analyze_llm.py [--preset cpu|1b] [--length L] [--indices 64] [--heads N] [--repeats 2]
       [--device cuda]
Needs ``transformers`` (pip install 'ess-reg[hf]').
"""

from __future__ import annotations

import argparse
import resource

import torch

from common import Results, add_common_args, best_of, machine_line, setup

PRESETS = {
    "cpu": {"length": 512, "llama": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=2),
            "mamba2": dict(hidden_size=256, state_size=32, num_heads=16, head_dim=32, num_hidden_layers=4)},
    "1b": {"length": 2048, "llama": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                         num_attention_heads=32, num_key_value_heads=8),
           "mamba2": dict(hidden_size=2048, state_size=128, num_heads=64, head_dim=64, num_hidden_layers=48)},
}
VOCAB = 32000

SUMMARY = ("ess_reg.analyze at evenly spaced indices of every layer, per head, on randomly initialised Hugging Face "
           "models (a Llama with eager attention and a Mamba2, float32, batch 1), against one forward pass.")


def build(name: str, shape: dict, length: int):
    import transformers

    torch.manual_seed(0)
    if name == "llama":
        config = transformers.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=length,
                                          attn_implementation="eager", **shape)
        return transformers.LlamaForCausalLM(config)
    config = transformers.Mamba2Config(vocab_size=VOCAB, expand=2, n_groups=1, chunk_size=256, **shape)
    return transformers.Mamba2ForCausalLM(config)


def peak(device: str, reset: bool = False) -> float:
    """GiB: the CUDA allocator's peak since the last reset, or the process's peak resident size."""
    if device == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--indices", type=int, default=64, help="evenly spaced indices per layer (default 64)")
    parser.add_argument("--length", type=int, default=None, help="sequence length (default: the preset's)")
    parser.add_argument("--heads", type=int, default=None, help="heads measured per layer (default: every head)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=["llama", "mamba2"], default=["llama", "mamba2"])
    parser.add_argument("--certified", type=float, default=None, metavar="RTOL",
                        help="measure through certified_ess at this relative tolerance (analyze(certified=RTOL))")
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    if args.indices < 1:
        raise SystemExit(f"--indices must be >= 1, got {args.indices}")
    for flag, value in (("--length", args.length), ("--heads", args.heads)):
        if value is not None and value < (2 if flag == "--length" else 1):
            raise SystemExit(f"{flag} is too small: {value}")
    import ess_reg

    preset = PRESETS[args.preset]
    length = args.length or preset["length"]
    results = Results("analyze_llm", SUMMARY, {"preset": args.preset, "indices": args.indices, "heads": args.heads,
                                               "repeats": args.repeats, "length": length,
                                               "certified": args.certified})
    print(f"machine: {machine_line()}")
    heads = f", {args.heads} heads per layer" if args.heads else ""
    heads += f", certified to rtol {args.certified:g}" if args.certified else ""
    results.describe(f"preset {args.preset}: L = {length}, batch 1, float32, {args.indices} indices per layer{heads}, "
                     f"device {args.device}")
    table = results.table(["model", "params", "forward s", "analyze s", "analyze / forward", "peak GiB"],
                          key=["analyze / forward"], widths=[8, 8, 10, 10, 18, 9])
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(1)).to(args.device)
    indices = ess_reg.EvenIndices(args.indices)
    for name in args.models:
        model = build(name, preset[name], length).to(args.device).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            peak(args.device, reset=True)
            forward = best_of(lambda: model(ids), args.repeats, warmup=1, device=args.device)
            forward_peak = peak(args.device)
            peak(args.device, reset=True)
            one_call = args.preset == "1b"
            analysis = best_of(lambda: ess_reg.analyze(model, ids, indices=indices, progress=one_call,
                                                       channel_limit=args.heads, certified=args.certified),
                               1 if one_call else args.repeats, warmup=0 if one_call else 1, device=args.device)
            analyze_peak = peak(args.device)
        layers = len(analysis.result.reports)
        table.add(name, f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.1f}M", f"{forward.best:.2f}",
                  f"{analysis.best:.1f}", f"{analysis.best / forward.best:.0f}x",
                  f"{forward_peak:.1f} / {analyze_peak:.1f}", model=name, params=params, layers=layers,
                  forward_s=forward.best, analyze_s=analysis.best, forward_peak_gib=forward_peak,
                  analyze_peak_gib=analyze_peak, paths=sorted(set(analysis.result.paths.values())))
        print(f"{name}: the layers' spectra paths: {', '.join(sorted(set(analysis.result.paths.values())))}")
        model = analysis = None  # free the model before the next one is built
        if args.device == "cuda":
            torch.cuda.empty_cache()
    results.note("peak GiB: forward / analyze; on the CPU both are the process's peak resident size so far "
                 "(it only grows), on CUDA the allocator's peak of each side")
    results.write(args.json)


if __name__ == "__main__":
    main()
