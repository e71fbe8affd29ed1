"""Could a stochastic estimate of the spectral tail make the dense entropy-ESS cheap? A best case, measured.

The certificate of ``ess_reg.certified_ess`` cannot pin down a long flat tail of small singular
values (softmax attention and Hyena at initialization), so those indices take the exact SVD.
The textbook alternative estimates what the tail adds to the two sums the entropy-ESS needs,
``S = sum s`` and ``G = sum s log s``, by Hutchinson's estimator on ``f(M)``, ``M = B^T B``,
``B = H (I - Q Q^T)`` the block with its leading ``k`` right singular directions removed
(deflation): ``tr f(M) ~ mean_j z_j^T f(M) z_j`` over random sign vectors ``z_j``.

This bench gives that estimator every advantage: the deflation uses the exact leading singular
vectors, ``f(M)`` is applied exactly (no Lanczos quadrature error), and the variance is not
simulated but computed exactly (for sign vectors,
``Cov(z^T A z, z^T B z) = 2 (tr(AB) - sum_i A_ii B_ii)``), carried to the ESS by the delta method.
What is left is the estimator's own noise: the probes a 95% interval of half-width ``--rtol``
(relative) needs, and a lower bound on their cost, one product with ``H`` and one with ``H^T``
per probe (a real estimator needs 20 or more Lanczos steps per probe), timed against the exact
SVD of the same block.

Usage: python bench/tail_estimate.py [--softmax-length 2048] [--hyena-length 1024] [--rtol 1e-3] [--threads N]
Needs ``transformers`` for the softmax case (pip install 'ess-reg[hf]'); it is skipped without.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from common import Results, add_common_args, best_of, machine_line, setup

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the zoo (models/) beside the package

SUMMARY = ("A best case for estimating the entropy-ESS's spectral tail stochastically (deflated Hutchinson with "
           "exact leading singular vectors and exact f, variance computed exactly): the probes a 95% interval "
           "of half-width rtol needs, and a lower bound on their cost against the exact SVD of the block.")
Z95 = 1.959964


def per_probe_sd(H: torch.Tensor, k: int) -> tuple[float, float, float]:
    """``(entropy-ESS, relative sd of its estimate with one probe, tail's share of sum s)`` for a
    block ``H`` (float64) with its ``k`` leading singular values known exactly."""
    U, s, Vh = torch.linalg.svd(H, full_matrices=False)
    total, glog = s.sum(), torch.special.xlogy(s, s).sum()
    ess = math.exp(math.log(total) - glog / total)
    B = H - (H @ Vh[:k].mT) @ Vh[:k]  # deflated: its spectrum is s[k:]
    ev, W = torch.linalg.eigh(B.mT @ B)
    root = ev.clamp(min=0).sqrt()
    f1 = W @ torch.diag(root) @ W.mT  # f(M) for sum s
    f2 = W @ torch.diag(torch.special.xlogy(root, root)) @ W.mT  # and for sum s log s

    def cov(a, b):  # of z^T a z and z^T b z for one random sign vector z
        return 2 * float((a * b).sum() - (torch.diagonal(a) * torch.diagonal(b)).sum())

    # log ESS = log S - G / S: its derivatives in the tail's two sums
    d1 = float(1 / total + glog / total ** 2)
    d2 = float(-1 / total)
    var = d1 * d1 * cov(f1, f1) + d2 * d2 * cov(f2, f2) + 2 * d1 * d2 * cov(f1, f2)
    return ess, math.sqrt(max(var, 0.0)), float(s[k:].sum() / total)


def blocks(args) -> list[tuple[str, torch.Tensor]]:
    """The middle Hankel block ``H_{L/2}`` of each case, float64."""
    found = []
    try:
        from matrix_free import llama_attention
    except ImportError:  # transformers missing
        print("transformers is not installed: the softmax case is skipped")
    else:
        _, probabilities = llama_attention(args.softmax_length)
        mid = args.softmax_length // 2
        found.append((f"softmax L={args.softmax_length}, head 0", probabilities[0, mid:, :mid].double()))
    from models.hyena import Hyena

    torch.manual_seed(0)
    hyena = Hyena(32).eval()
    x = torch.randn(1, args.hyena_length, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        T = hyena.operator_and_values(x).operator.materialize()[0, 0].double()
    mid = args.hyena_length // 2
    found.append((f"hyena L={args.hyena_length}, channel 0", T[mid:, :mid]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--softmax-length", type=int, default=2048)
    parser.add_argument("--hyena-length", type=int, default=1024)
    parser.add_argument("--deflate", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rtol", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    results = Results("tail_estimate", SUMMARY, vars(args))
    print(f"machine: {machine_line()}")
    rtols = " and ".join(map(str, args.rtol))
    results.describe(f"float64, the middle block H_(L/2) of each case, rtol {rtols}; times best of "
                     f"{args.repeats} after a warm-up, each side timed on its own")
    table = results.table(["block", "k", "tail share of sum s", "sd, 1 probe", "rtol", "probes for rtol",
                           "SVD s", "products s (lower bound)", "products / SVD"], key=["products / SVD"],
                          widths=[28, 4, 19, 11, 6, 15, 7, 24, 14])
    for name, H in blocks(args):
        svd = best_of(lambda: torch.linalg.svdvals(H), args.repeats, warmup=1).best
        for k in args.deflate:
            ess, sd, share = per_probe_sd(H, k)
            for rtol in args.rtol:
                probes = math.ceil((Z95 * sd / rtol) ** 2)
                Z = torch.randint(0, 2, (H.shape[-1], probes), generator=torch.Generator().manual_seed(0)).double()
                products = best_of(lambda: H.mT @ (H @ (2 * Z - 1)), args.repeats, warmup=1).best
                table.add(name, str(k), f"{share:.3f}", f"{sd:.2e}", f"{rtol:g}", str(probes), f"{svd:.3f}",
                          f"{products:.3f}", f"{products / svd:.2f}x", block=name, k=k, ess=ess, sd_one_probe=sd,
                          tail_share=share, rtol=rtol, probes=probes, svd_s=svd, products_s=products)
    results.note("sd, 1 probe: of the estimated entropy-ESS relative to the exact one, with one probe (it falls as "
                 "1/sqrt(probes)); products: one product with H and one with H^T per probe, the least any "
                 "estimator of f(M) needs (Lanczos quadrature takes 20 or more per probe)")
    results.write(args.json)


if __name__ == "__main__":
    main()
