"""Command line: ``python -m ess_reg demo``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ess_reg", description="Effective state-size (ESS) tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="print the ESS of a few example operators, with TSS beside each")
    demo.add_argument("--seq-len", type=int, default=128, help="sequence length L (default 128)")
    demo.add_argument("--channels", type=int, default=4, help="channels per operator (default 4)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of tolerance-ESS (default 1e-3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        if args.seq_len < 8:
            print(f"error: --seq-len must be >= 8 for the examples, got {args.seq_len}", file=sys.stderr)
            return 2
        if args.channels < 1:
            print(f"error: --channels must be >= 1, got {args.channels}", file=sys.stderr)
            return 2
        demo_main(args.seq_len, args.channels, args.seed, args.tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
