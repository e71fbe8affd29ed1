"""Weighted linear attention: ``T[i, j] = q_i^T diag(a)^(i-j) k_j`` with a learned decay ``a``.

The decay is input-independent, one per head and key dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import log_uniform
from .la import LinearAttention


class WeightedLinearAttention(LinearAttention):
    def __init__(self, d_model: int, num_heads: int = 1, feature_dim: int = 16,
                 decay_min: float = 1e-3, decay_max: float = 1e-1, **kwargs):
        super().__init__(d_model, num_heads, feature_dim, **kwargs)
        if not 0 < decay_min <= decay_max < 1:
            raise ValueError("need 0 < decay_min <= decay_max < 1 (forgetting rates 1 - a), "
                             f"got {decay_min}, {decay_max}")
        # 1 - a log-uniform in [decay_min, decay_max]: memories from ~10 to ~1000 steps.
        forget = log_uniform((num_heads, self.feature_size), decay_min, decay_max)
        self.decay_logit = nn.Parameter(torch.log(1 - forget) - torch.log(forget))  # logit(a)

    def keep_features(self, kept: torch.Tensor, rows: torch.Tensor) -> None:
        self.decay_logit = nn.Parameter(self.decay_logit.detach().gather(1, kept))

    def log_decay(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return F.logsigmoid(self.decay_logit)[None, :, None, :].to(x.dtype).expand(shape)
