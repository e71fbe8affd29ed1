"""Effective state-size (ESS) from the spectra of ``H_i = T[i:, :i]``, and its aggregates.

Every ESS function takes either an operator / dense ``T`` (spectra are computed with
:func:`~ess_reg.spectra.hankel_svdvals`, whose keyword options pass through) and returns
``(..., len(indices))``, or, in its ``*_from_svdvals`` form, singular values ``(..., width)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .operators import Operator, as_operator
from .spectra import hankel_svdvals, resolve_indices

__all__ = [
    "ENTROPY_EPS",
    "entropy_ess",
    "entropy_ess_from_svdvals",
    "tolerance_ess",
    "tolerance_ess_from_svdvals",
    "soft_tolerance_ess",
    "soft_tolerance_ess_from_svdvals",
    "average_ess",
    "total_ess",
    "LayerESS",
    "layer_ess",
]

# Smoothing of entropy-ESS: p log(p + eps).  p is normalized, so eps is scale-free; it keeps the
# gradient finite at zero singular values (log eps instead of -inf) and moves ordinary values by
# about (number of singular values) * eps, far below 1e-6 relative.
ENTROPY_EPS = 1e-12
DEFAULT_TOL = 1e-3  # relative tolerance of tolerance-ESS: sigma > 1e-3 * sigma_max counts
DEFAULT_TEMPERATURE = 0.5  # soft count width, in natural-log units of sigma / threshold


def _check_svdvals(sigma: torch.Tensor) -> None:
    if not isinstance(sigma, torch.Tensor) or not sigma.is_floating_point():
        raise ValueError("singular values must be a floating-point tensor (..., width)")
    if sigma.dim() < 1 or sigma.shape[-1] < 1:
        raise ValueError(f"singular values need a last dim of width >= 1, got shape {tuple(sigma.shape)}")
    if not bool(torch.isfinite(sigma).all()):
        raise ValueError("singular values contain NaN/Inf")
    if bool((sigma < 0).any()):
        raise ValueError("singular values must be >= 0")


def _check_tol(tol: float, relative: bool) -> None:
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if relative and tol >= 1:
        raise ValueError(
            f"relative tol={tol} >= 1 counts nothing (no singular value exceeds sigma_max); "
            "pass relative=False for an absolute threshold"
        )


def entropy_ess_from_svdvals(sigma: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Effective rank ``exp(-sum p log p)``, ``p = sigma / sum(sigma)``; 0 for an all-zero block.

    Smooth: finite gradients at rank-deficient blocks (via ``eps``) and at all-zero blocks
    (where the value is 0 and the gradient 0).
    """
    _check_svdvals(sigma)
    total = sigma.sum(-1, keepdim=True)
    nonzero = total > 0
    p = sigma / torch.where(nonzero, total, torch.ones_like(total))
    entropy = -(p * torch.log(p + eps)).sum(-1)
    return torch.where(nonzero.squeeze(-1), torch.exp(entropy), torch.zeros_like(entropy))


def _scaled(sigma: torch.Tensor, relative: bool) -> torch.Tensor:
    if not relative:
        return sigma
    top = sigma.amax(-1, keepdim=True)
    return sigma / torch.where(top > 0, top, torch.ones_like(top))


def tolerance_ess_from_svdvals(sigma: torch.Tensor, tol: float = DEFAULT_TOL, relative: bool = True) -> torch.Tensor:
    """Number of singular values ``> tol * sigma_max`` (``> tol`` when ``relative=False``)."""
    _check_svdvals(sigma)
    _check_tol(tol, relative)
    return (_scaled(sigma, relative) > tol).sum(-1).to(sigma.dtype)


def soft_tolerance_ess_from_svdvals(
    sigma: torch.Tensor,
    tol: float = DEFAULT_TOL,
    relative: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """Sigmoid-relaxed tolerance-ESS: ``sum sigmoid(log(sigma / threshold) / temperature)``.

    Tends to :func:`tolerance_ess_from_svdvals` as ``temperature -> 0``; a singular value at
    the threshold counts 1/2.  Relaxed in log space, so it is scale-free like the count.
    """
    _check_svdvals(sigma)
    _check_tol(tol, relative)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    tiny = torch.finfo(sigma.dtype).tiny
    return torch.sigmoid((torch.log(_scaled(sigma, relative) + tiny) - math.log(tol)) / temperature).sum(-1)


def entropy_ess(
    x: "torch.Tensor | Operator",
    indices: "int | Sequence[int] | torch.Tensor | None" = None,
    *,
    eps: float = ENTROPY_EPS,
    **spectra_options,
) -> torch.Tensor:
    """Entropy-ESS (effective rank) of ``H_i`` per index: ``(..., len(indices))``. Differentiable."""
    return entropy_ess_from_svdvals(hankel_svdvals(x, indices, **spectra_options), eps=eps)


def tolerance_ess(
    x: "torch.Tensor | Operator",
    tol: float = DEFAULT_TOL,
    relative: bool = True,
    indices: "int | Sequence[int] | torch.Tensor | None" = None,
    **spectra_options,
) -> torch.Tensor:
    """Tolerance-ESS of ``H_i`` per index: how many singular values exceed the threshold."""
    _check_tol(tol, relative)
    return tolerance_ess_from_svdvals(hankel_svdvals(x, indices, **spectra_options), tol, relative)


def soft_tolerance_ess(
    x: "torch.Tensor | Operator",
    tol: float = DEFAULT_TOL,
    relative: bool = True,
    indices: "int | Sequence[int] | torch.Tensor | None" = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    **spectra_options,
) -> torch.Tensor:
    """Smooth surrogate of :func:`tolerance_ess`, for use in a loss."""
    _check_tol(tol, relative)
    sigma = hankel_svdvals(x, indices, **spectra_options)
    return soft_tolerance_ess_from_svdvals(sigma, tol, relative, temperature)


def average_ess(ess: torch.Tensor) -> torch.Tensor:
    """Average ESS: the mean over sequence indices (the last dim)."""
    return ess.mean(-1)


def total_ess(ess: torch.Tensor, multiplicity: int = 1, channel_dim: int = -2) -> torch.Tensor:
    """Total ESS: the sum over channels, each counted ``multiplicity`` times (value channels
    sharing one operator).  ``ess`` is ``(..., channels, indices)`` by default."""
    return ess.sum(channel_dim) * multiplicity


ESS_KINDS = {"entropy": entropy_ess_from_svdvals, "tolerance": tolerance_ess_from_svdvals,
             "soft_tolerance": soft_tolerance_ess_from_svdvals}


@dataclass
class LayerESS:
    """ESS of one layer's operator: ``values`` is ``(batch, channels, len(indices))``."""

    values: torch.Tensor
    indices: torch.Tensor
    multiplicity: int

    @property
    def average(self) -> torch.Tensor:
        """Average ESS per channel, also averaged over channels and batch: a scalar."""
        return self.values.mean()

    @property
    def total(self) -> torch.Tensor:
        """Total ESS of the layer (channels x multiplicity), averaged over indices and batch."""
        return total_ess(self.values, self.multiplicity).mean()

    @property
    def total_per_index(self) -> torch.Tensor:
        """Total ESS at each index, averaged over batch: ``(len(indices),)``."""
        return total_ess(self.values, self.multiplicity).mean(0)


def layer_ess(
    operators: Mapping[str, "torch.Tensor | Operator"],
    kind: str = "entropy",
    indices: "int | Sequence[int] | torch.Tensor | None" = None,
    *,
    ess_options: Mapping | None = None,
    **spectra_options,
) -> dict[str, LayerESS]:
    """ESS of each named layer's operator, shaped ``(batch, channels, indices)``.

    Each operator is ``(batch, channels, L, ...)``; a ``(channels, L, ...)`` one counts as a
    batch of one.  ``kind`` is ``"entropy"``, ``"tolerance"`` or ``"soft_tolerance"``;
    ``ess_options`` go to that ESS (e.g. ``{"tol": 1e-2}``).
    """
    if kind not in ESS_KINDS:
        raise ValueError(f"unknown ESS kind {kind!r}; choose one of {sorted(ESS_KINDS)}")
    if not operators:
        raise ValueError("no operators given: the model has no ESS-capable layer")
    result = {}
    for name, x in operators.items():
        op = as_operator(x)
        if len(op.batch_shape) not in (1, 2):
            raise ValueError(
                f"layer {name!r}: operator batch shape must be (batch, channels) or (channels,), "
                f"got {tuple(op.batch_shape)}"
            )
        idx = resolve_indices(indices, op.seq_len)
        values = ESS_KINDS[kind](hankel_svdvals(op, idx, **spectra_options), **(ess_options or {}))
        if values.dim() == 2:
            values = values.unsqueeze(0)
        result[name] = LayerESS(values=values, indices=idx, multiplicity=op.multiplicity)
    return result
