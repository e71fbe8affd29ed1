"""``ess_reg.analyze`` on Hugging Face models: its time against one forward pass.

Tiny random configs built here (nothing downloaded): a Mamba2 and a Llama (eager attention),
hidden 64, 2 layers, batch 2, float32 on the CPU. For each, one forward pass (no gradients) and
``analyze`` (every layer at every index 1..L-1, per head), each the best of ``--repeats`` after a
warm-up, timed on its own.

Usage: python bench/analyze_speed.py [--lengths 128 256] [--repeats 3] [--threads N]
Needs ``transformers`` (pip install 'ess-reg[hf]').
"""

from __future__ import annotations

import argparse

import torch

from common import Results, add_common_args, best_of, machine_line, setup

SUMMARY = ("ess_reg.analyze (every layer at every index, per head) on tiny random Hugging Face Mamba2 and Llama "
           "models (hidden 64, 2 layers, batch 2), against one forward pass of the same model.")


def models() -> dict:
    import transformers

    torch.manual_seed(0)
    mamba2 = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=256, hidden_size=64, state_size=16, num_heads=4, head_dim=32, expand=2, n_groups=1,
        num_hidden_layers=2, chunk_size=64))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, attn_implementation="eager"))
    return {"mamba2": mamba2.eval(), "llama (eager)": llama.eval()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    import ess_reg

    results = Results("analyze_speed", SUMMARY, {"lengths": args.lengths, "repeats": args.repeats})
    print(f"machine: {machine_line()}")
    results.describe(f"batch 2, float32, best of {args.repeats} after a warm-up, each side timed on its own")
    table = results.table(["model", "L", "forward ms", "analyze s", "analyze / forward"], key=["analyze / forward"],
                          widths=[14, 6, 11, 10, 18])
    for name, model in models().items():
        for length in args.lengths:
            ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                forward = best_of(lambda: model(ids), args.repeats, warmup=1, device=args.device)
                analysis = best_of(lambda: ess_reg.analyze(model, ids), args.repeats, warmup=1, device=args.device)
            table.add(name, str(length), f"{1e3 * forward.best:.1f}", f"{analysis.best:.2f}",
                      f"{analysis.best / forward.best:.0f}x", model=name, length=length, forward_s=forward.best,
                      analyze_s=analysis.best)
    results.note("analyze measures every index of every layer (the Llama's attention probabilities on the dense "
                 "path, the Mamba2's heads on the state-space path)")
    results.write(args.json)


if __name__ == "__main__":
    main()
