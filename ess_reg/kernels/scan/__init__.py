"""``y = T v`` for a diagonal state-space operator without forming ``T``.

Every method computes ``x_i = exp(log_decay_i) * x_{i-1} + B_i v_i^T`` (state ``N x K``) and
``y_i = C_i^T x_i``: ``"chunked"`` and ``"factored"`` in chunks (:mod:`.chunked`),
``"sequential"`` one step per position (:mod:`.naive`, the reference).
"""

from __future__ import annotations

import torch

from ..._checks import check_floating, check_int
from .chunked import chunk_scan
from .naive import sequential_scan

__all__ = ["scan_apply", "SCAN_METHODS"]

SCAN_METHODS = ("chunked", "factored", "sequential")


def scan_apply(
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    v: torch.Tensor,
    method: str = "chunked",
    chunk_size: int = 32,
) -> torch.Tensor:
    """``T v`` with ``log_decay, B, C`` of shape ``(..., L, N)`` and ``v`` of ``(..., L, K)``."""
    if not isinstance(method, str) or method not in SCAN_METHODS:
        raise ValueError(f"unknown apply method {method!r}; choose one of {SCAN_METHODS}")
    check_int("chunk_size", chunk_size, 1)
    for name, t in (("log_decay", log_decay), ("B", B), ("C", C), ("v", v)):
        check_floating(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., L, features), got a {t.dim()}-d tensor")
    if v.shape[-2] != B.shape[-2]:
        raise ValueError(f"v must have shape (..., L={B.shape[-2]}, K), got {tuple(v.shape)}")
    if method == "sequential":
        return sequential_scan(log_decay, B, C, v)
    return chunk_scan(log_decay, B, C, v, chunk_size, factored=method == "factored")
