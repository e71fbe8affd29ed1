"""Theoretical state size (TSS): the capacity a layer actually runs, to set ESS against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .ess import LayerESS
from .spectra import resolve_indices

__all__ = ["StateSize", "growing_state_size", "tss_at", "FailureThresholds", "LayerReport",
           "SATURATION", "COLLAPSE", "HEALTHY"]

# A mixer's TSS per channel: a number (SSM state N, linear-attention feature size, SWA window),
# or a function of (indices, L) for layers whose state grows with the sequence.
StateSize = int | float | Callable[[torch.Tensor, int], torch.Tensor]


def growing_state_size(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """TSS of softmax attention and long convolutions: ``min(i, L - i)``.

    The KV cache (or the convolution's input history) holds all ``i`` past tokens, and no block
    ``H_i`` can have rank above ``min(i, L - i)``.
    """
    return torch.minimum(indices, seq_len - indices)


def tss_at(
    tss: StateSize, indices: "int | Sequence[int] | torch.Tensor | None", seq_len: int
) -> torch.Tensor:
    """TSS at each requested index, as a float64 tensor ``(len(indices),)``."""
    idx = resolve_indices(indices, seq_len)
    if callable(tss):
        return torch.as_tensor(tss(idx, seq_len), dtype=torch.float64)
    if isinstance(tss, bool) or not isinstance(tss, (int, float)) or not tss >= 0:
        raise ValueError(f"a state size must be a non-negative number or a function of (indices, L), got {tss!r}")
    return torch.full(idx.shape, float(tss), dtype=torch.float64)


# ---- per-layer reports and failure modes ------------------------------------------------------

SATURATION = "saturation"
COLLAPSE = "collapse"
HEALTHY = "healthy"


@dataclass
class FailureThresholds:
    """When a layer's utilization ESS/TSS is called saturated or collapsed.

    * saturation: ``ESS / TSS >= saturation`` — the state is full; capacity is the limit.
    * collapse: ``ESS / TSS <= collapse`` and, when the task says how many items must be held
      (``items_to_recall``, e.g. MQAR's kv pairs), ESS at the end of the context below that
      number — capacity is there but unused, on a task that needs more.
    """

    saturation: float = 0.9
    collapse: float = 0.2

    def __post_init__(self):
        if not 0 <= self.collapse < self.saturation <= 1:
            raise ValueError(
                f"need 0 <= collapse < saturation <= 1, got collapse={self.collapse}, saturation={self.saturation}"
            )


@dataclass
class LayerReport:
    """ESS of one layer beside its TSS, with the derived utilization and failure mode."""

    name: str
    ess: LayerESS
    tss: torch.Tensor  # (len(indices),) TSS per value channel at each index
    value_channels: int
    context_end: int | None = None  # index where the task's context ends (ESS/kv is read there)
    items_to_recall: int | None = None

    @property
    def ess_avg(self) -> float:
        """Average ESS of one operator (channel or head): mean over batch, channels, indices."""
        return self.ess.average.item()

    @property
    def ess_total(self) -> float:
        return self.ess.total.item()

    @property
    def tss_avg(self) -> float:
        return self.tss.mean().item()

    @property
    def tss_total(self) -> float:
        return self.value_channels * self.tss_avg

    @property
    def utilization(self) -> float:
        """Mean over indices of ESS_i / TSS_i (indices where TSS is 0 are left out)."""
        per_index = self.ess.values.mean(dim=(0, 1)).double().cpu()
        tss = self.tss.to(per_index)
        keep = tss > 0
        return (per_index[keep] / tss[keep]).mean().item() if keep.any() else float("nan")

    def _context_end_position(self) -> int | None:
        if self.context_end is None:
            return None
        hits = (self.ess.indices == self.context_end).nonzero()
        return int(hits[0, 0]) if len(hits) else None

    @property
    def ess_at_context_end(self) -> float | None:
        k = self._context_end_position()
        return None if k is None else self.ess.values[..., k].mean().item()

    @property
    def ess_per_item(self) -> float | None:
        """ESS at the end of the context per item to recall (ESS/kv on MQAR)."""
        at_end = self.ess_at_context_end
        return None if at_end is None or not self.items_to_recall else at_end / self.items_to_recall

    @property
    def tss_per_item(self) -> float | None:
        k = self._context_end_position()
        return None if k is None or not self.items_to_recall else self.tss[k].item() / self.items_to_recall

    def failure_mode(self, thresholds: FailureThresholds | None = None) -> str:
        t = thresholds or FailureThresholds()
        u = self.utilization
        if u >= t.saturation:
            return SATURATION
        if u <= t.collapse:
            at_end = self.ess_at_context_end
            if at_end is None or not self.items_to_recall or at_end < self.items_to_recall:
                return COLLAPSE
        return HEALTHY

    def metrics(self) -> dict[str, float]:
        out = {"ess_avg": self.ess_avg, "ess_total": self.ess_total, "tss_avg": self.tss_avg,
               "tss_total": self.tss_total, "ess_over_tss": self.utilization}
        if self.ess_per_item is not None:
            out["ess_per_kv"] = self.ess_per_item
            out["tss_per_kv"] = self.tss_per_item
        return out
