"""``analyze(model, inputs)``: every measurable layer's ESS, per head, in one call.

It measures every index (so that profiles and boundaries are complete), averages each
operator's ESS (a head, an SSM channel) over the examples and indices, and, given the ids of
boundary tokens, reads how much each layer's memory drops across them
(:mod:`ess_reg.boundaries`). Works for any model the probe measures: the zoo, a layer that
implements :class:`ess_reg.contract.ESSLayer`, or an adapted one (Hugging Face Mamba, Mamba2 and
eager attention, ``nn.MultiheadAttention``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .boundaries import boundary_modulation
from .diagnosis import LayerReport
from .probe import Probe

__all__ = ["Analysis", "analyze"]


@dataclass
class Analysis:
    reports: dict[str, LayerReport]
    per_head: dict[str, torch.Tensor]  # layer -> (operators,) mean ESS of each head / channel
    modulation: dict[str, float] = field(default_factory=dict)  # layer -> drop across boundaries

    def table(self) -> str:
        """One line per layer: operators, TSS, mean ESS, the spread over heads, the modulation."""
        lines = [f"{'layer':<28} {'ops':>4} {'TSS':>7} {'ESS':>7} {'head min':>9} {'head max':>9}"
                 + (f" {'boundary drop':>13}" if self.modulation else "")]
        for name, report in self.reports.items():
            heads = self.per_head[name]
            line = (f"{name or '(model)':<28} {len(heads):>4} {report.tss_avg:>7.2f} {report.ess_avg:>7.2f} "
                    f"{heads.min().item():>9.2f} {heads.max().item():>9.2f}")
            if self.modulation:  # + 0.0: a drop of -0.001 prints as 0.00, not -0.00
                line += f" {round(self.modulation.get(name, float('nan')), 2) + 0.0:>13.2f}"
            lines.append(line)
        return "\n".join(lines)


def analyze(model: nn.Module, inputs: torch.Tensor, *, separators: Collection[int] | None = None, window: int = 4,
            kind: str = "entropy", layers: Sequence[str] | None = None, batch_limit: int | None = None,
            ess_options: Mapping | None = None, task=None) -> Analysis:
    """ESS of every measurable layer of ``model`` on ``inputs`` at every index, per head; with
    ``separators`` (token ids), each layer's ESS drop across them. ``batch_limit`` measures the
    first examples only (every index of a long sequence costs)."""
    probe = Probe(model, layers=layers, indices="all", kind=kind, ess_options=ess_options, batch_limit=batch_limit,
                  task=task)
    reports = probe(inputs)
    per_head = {name: r.ess.values.detach().double().mean(dim=(0, 2)).cpu() for name, r in reports.items()}
    modulation = {}
    if separators is not None:
        modulation = {name: boundary_modulation(r, inputs, separators, window) for name, r in reports.items()}
    return Analysis(reports, per_head, modulation)
