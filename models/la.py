"""Linear attention: ``T[i, j] = phi(q_i) . phi(k_j)`` (optionally row-normalized).

A finite-state mixer: per head the state is ``N x d_v`` with ``N`` the feature size, so its
TSS is ``N`` per value channel.  :class:`LinearAttention` is also the base of the decayed
variants (``wla``, ``gla``), which only change :meth:`log_decay` and the readout.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ess_reg import StateSpaceOperator

from .base import Mixer, MixerTrace, check_positive, head_dim, keep_rows, merge_heads, split_heads, top_coordinates

FEATURE_MAPS = ("identity", "elu", "taylor")


def feature_size(feature_map: str, dim: int) -> int:
    """State size ``N`` a feature map of ``dim`` inputs produces."""
    if feature_map == "taylor":
        return 1 + dim + dim * (dim + 1) // 2
    return dim


def apply_feature_map(feature_map: str, x: torch.Tensor) -> torch.Tensor:
    if feature_map == "identity":
        return x * x.shape[-1] ** -0.25  # so that q . k carries the usual 1 / sqrt(d)
    if feature_map == "elu":
        return F.elu(x) + 1
    # Taylor (Based): phi(q) . phi(k) = 1 + s + s^2 / 2 with s = q . k / sqrt(d).  Only the
    # d(d+1)/2 distinct products x_a x_b (a <= b) are kept, so no feature is redundant.
    d = x.shape[-1]
    x = x * d**-0.25
    rows, cols = torch.triu_indices(d, d, device=x.device)
    weight = torch.where(rows == cols, 2**-0.5, 1.0).to(x.dtype)
    second = x[..., rows] * x[..., cols] * weight
    return torch.cat([torch.ones_like(x[..., :1]), x, second], dim=-1)


class LinearAttention(Mixer):
    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        feature_dim: int = 16,
        feature_map: str = "identity",
        normalize: bool = False,
        bias: bool = False,
        chunk_size: int = 32,
        eps: float = 1e-6,
    ):
        super().__init__(d_model)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {FEATURE_MAPS}")
        if normalize and feature_map == "identity":
            raise ValueError("normalize=True needs a positive feature map ('elu' or 'taylor'), not 'identity'")
        check_positive("feature_dim", feature_dim)
        check_positive("chunk_size", chunk_size)
        self.num_heads, self.head_dim = num_heads, head_dim(d_model, num_heads)
        self.feature_dim, self.feature_map, self.normalize = feature_dim, feature_map, normalize
        self.chunk_size, self.eps = chunk_size, eps
        self.q = nn.Linear(d_model, num_heads * feature_dim, bias=bias)
        self.k = nn.Linear(d_model, num_heads * feature_dim, bias=bias)
        self.v = nn.Linear(d_model, d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    @property
    def feature_size(self) -> int:
        return feature_size(self.feature_map, self.feature_dim)

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        """``feature_dim`` whose feature map yields ``state_size`` features (TSS)."""
        check_positive("state_size", state_size)
        feature_map = kwargs.get("feature_map", "identity")
        sizes = {d: feature_size(feature_map, d) for d in range(1, state_size + 1)}
        dims = [d for d, n in sizes.items() if n == state_size]
        if not dims:
            reachable = sorted(n for n in set(sizes.values()) if n <= state_size)[-4:]
            raise ValueError(f"state_size={state_size} is not a feature size of the {feature_map!r} feature map; "
                             f"the nearest below are {reachable}")
        return {"feature_dim": dims[0]}

    def log_decay(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-step log-decays ``(B, H, L, N)``; none for plain linear attention."""
        return x.new_zeros(()).expand(shape)

    def readout(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out(merge_heads(y))

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        q = apply_feature_map(self.feature_map, split_heads(self.q(x), self.num_heads))
        k = apply_feature_map(self.feature_map, split_heads(self.k(x), self.num_heads))
        v = split_heads(self.v(x), self.num_heads)
        log_decay = self.log_decay(x, k.shape)
        if self.normalize:
            # Row sums of T: the same operator applied to ones; dividing C by them normalizes rows.
            unnormalized = StateSpaceOperator(log_decay, k, q, check_values=False)
            z = unnormalized.apply(torch.ones_like(v[..., :1]), chunk_size=self.chunk_size)
            q = q / (z + self.eps)
        op = StateSpaceOperator(log_decay, k, q, multiplicity=self.head_dim, check_values=check_values)
        return MixerTrace(op, v, lambda y: self.readout(y, x))

    def state_size(self) -> int:
        return self.feature_size

    def keep_state(self, scores: torch.Tensor, size: int) -> torch.Tensor:
        """Keep the ``size`` best features of each head (``ess_reg.compression.StateCompressible``):
        their rows of the query and key projections, and of what else is per feature."""
        if self.feature_map == "taylor":
            raise ValueError("the taylor feature map's features are products of its inputs: no subset of them is a "
                             "smaller feature map, so this layer's state cannot be cut coordinate by coordinate")
        kept = top_coordinates(scores, size)  # (H, size)
        rows = (torch.arange(self.num_heads, device=kept.device)[:, None] * self.feature_size + kept).flatten()
        # the identity map scales by feature_dim ** -0.25: the kept rows carry the old scale
        scale = (size / self.feature_dim) ** 0.25 if self.feature_map == "identity" else 1.0
        self.q, self.k = keep_rows(self.q, rows, scale), keep_rows(self.k, rows, scale)
        self.keep_features(kept, rows)
        self.feature_dim = size
        return kept

    def keep_features(self, kept: torch.Tensor, rows: torch.Tensor) -> None:
        """Subclasses with per-feature parameters (decays, gates) keep theirs: ``kept`` ``(H, size)``
        per head, ``rows`` the same as flat indices into ``H * feature_size``."""
