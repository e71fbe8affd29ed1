"""Gated linear attention: ``T[i, j] = q_i^T (prod_{t=j+1..i} diag(alpha_t)) k_j``.

``log alpha_t = logsigmoid(W x_t) / normalizer`` from a low-rank gate projection, as in
flash-linear-attention's GLA; the readout is a per-head RMSNorm times a SiLU output gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import RMSNorm, keep_rows, merge_heads
from .la import LinearAttention


class GatedLinearAttention(LinearAttention):
    # GLA's normalizer 16 first; 1 forgets within a few tokens at init, 64 slowly
    init_schemes = tuple({"gate_normalizer": g} for g in (16.0, 1.0, 4.0, 64.0))

    def __init__(self, d_model: int, num_heads: int = 1, feature_dim: int = 16,
                 gate_normalizer: float = 16.0, gate_rank: int = 16, **kwargs):
        super().__init__(d_model, num_heads, feature_dim, **kwargs)
        if not gate_normalizer > 0:
            raise ValueError(f"gate_normalizer must be > 0, got {gate_normalizer}")
        self.gate_normalizer = gate_normalizer
        self.gate = nn.Sequential(nn.Linear(d_model, gate_rank, bias=False),
                                  nn.Linear(gate_rank, num_heads * self.feature_size))
        self.output_gate = nn.Linear(d_model, d_model, bias=False)
        self.norm = RMSNorm(self.head_dim)

    def log_decay(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        g = self.gate(x).view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)
        return F.logsigmoid(g) / self.gate_normalizer

    def keep_features(self, kept: torch.Tensor, rows: torch.Tensor) -> None:
        self.gate[1] = keep_rows(self.gate[1], rows)

    def readout(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out(merge_heads(self.norm(y)) * F.silu(self.output_gate(x)))
