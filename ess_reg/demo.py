"""A short tour: ESS of a few operators whose memory we can reason about, TSS beside each."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ess import entropy_ess, tolerance_ess
from .operators import DenseOperator, StateSpaceOperator


@dataclass
class Example:
    name: str
    operator: DenseOperator | StateSpaceOperator
    tss: Callable[[torch.Tensor], torch.Tensor]  # TSS at each index
    note: str


def _constant_tss(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda idx: torch.full(idx.shape, float(n), dtype=torch.float64)


def examples(seq_len: int = 128, channels: int = 4, seed: int = 0) -> list[Example]:
    """Example operators with ``channels`` channels each, float64, deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    L, C = seq_len, channels

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    order = 8
    # LTI: the same diagonal system at every step; distinct decays keep all N modes visible.
    decays = torch.linspace(0.5, 0.98, order, dtype=torch.float64)
    lti = StateSpaceOperator(
        decays.log().expand(C, L, order), randn(C, 1, order).expand(C, L, order), randn(C, 1, order).expand(C, L, order)
    )
    d_k = 16
    q, k = randn(C, L, d_k), randn(C, L, d_k)
    scores = (q @ k.transpose(-1, -2)) / d_k**0.5
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    attention = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    gates = torch.nn.functional.logsigmoid(randn(C, L, d_k)) / 16  # GLA-style normalizer
    shift = 3
    return [
        Example(f"LTI SSM, order {order}", lti, _constant_tss(order),
                "real modes: Hankel spectrum decays fast, ESS < N"),
        Example("same LTI, materialized", DenseOperator(lti.materialize()), _constant_tss(order),
                "dense path, same answer"),
        Example(
            f"softmax attention, d={d_k}", DenseOperator(attention),
            lambda idx: torch.minimum(idx, L - idx).to(torch.float64), "KV cache grows: TSS = min(i, L-i)",
        ),
        Example(f"gated linear recurrence, d_k={d_k}", StateSpaceOperator(gates, k, q), _constant_tss(d_k),
                "input-dependent decay"),
        Example(f"linear attention, d_k={d_k}", StateSpaceOperator(torch.zeros(C, L, d_k, dtype=torch.float64), k, q),
                _constant_tss(d_k), "no decay"),
        Example(f"shift by {shift}",
                DenseOperator(torch.diag(torch.ones(L - shift, dtype=torch.float64), -shift).expand(C, L, L)),
                _constant_tss(shift), "a delay line of length 3"),
    ]


def run(seq_len: int = 128, channels: int = 4, seed: int = 0, tol: float = 1e-3) -> list[dict]:
    """Measure every example; returns one row per example (also printed by :func:`main`)."""
    rows = []
    for ex in examples(seq_len, channels, seed):
        start = time.perf_counter()
        ent = entropy_ess(ex.operator)  # (channels, L - 1)
        tol_ess = tolerance_ess(ex.operator, tol=tol)
        seconds = time.perf_counter() - start
        idx = torch.arange(1, seq_len)
        tss = ex.tss(idx)
        rows.append(
            {
                "operator": ex.name,
                "path": ex.operator.kind.replace("_", "-"),
                "tss": tss.mean().item(),
                "tolerance_ess": tol_ess.mean().item(),
                "entropy_ess": ent.mean().item(),
                "entropy_ess_mid": ent[:, seq_len // 2 - 1].mean().item(),
                "utilization": (ent / tss).mean().item(),  # entropy-ESS, the measure the rest of ess-reg uses
                "ms": 1e3 * seconds,
                "note": ex.note,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'operator':<34} {'path':<11} {'TSS':>6} {'tol-ESS':>8} {'ent-ESS':>8} {'ent@L/2':>8} "
              f"{'ent/TSS':>8} {'ms':>7}  note")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['operator']:<34} {r['path']:<11} {r['tss']:>6.1f} {r['tolerance_ess']:>8.2f} {r['entropy_ess']:>8.2f} "
            f"{r['entropy_ess_mid']:>8.2f} {r['utilization']:>8.2f} {r['ms']:>7.1f}  {r['note']}"
        )
    return "\n".join(lines)


def main(seq_len: int = 128, channels: int = 4, seed: int = 0, tol: float = 1e-3) -> None:
    print(f"ESS of example operators: L={seq_len}, {channels} channels, float64, all indices 1..L-1 (means)")
    print(f"tol-ESS counts singular values > {tol:g} x the largest; ent-ESS is the effective rank (the measure "
          "probes, reports and the penalty use by default); ent/TSS is ent-ESS over TSS.\n")
    print(format_table(run(seq_len, channels, seed, tol)))
