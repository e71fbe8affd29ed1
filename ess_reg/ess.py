"""Effective state-size (ESS) from the spectra of ``H_i = T[i:, :i]``, and its aggregates.

Every ESS function takes either an operator / dense ``T`` (spectra are computed with
:func:`~ess_reg.spectra.hankel_svdvals`, whose keyword options pass through) and returns
``(..., len(indices))``, or, in its ``*_from_svdvals`` form, singular values ``(..., width)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ._checks import check_int, check_number
from .operators import Operator, as_operator
from .operators.checks import _check_multiplicity
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
    check_number("tol", tol, minimum=0, strict=True)
    if relative and tol >= 1:
        raise ValueError(
            f"relative tol={tol} >= 1 counts nothing (no singular value exceeds sigma_max); "
            "pass relative=False for an absolute threshold"
        )


def _check_temperature(temperature: float) -> None:
    check_number("temperature", temperature, minimum=0, strict=True)


def entropy_ess_from_svdvals(sigma: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Effective rank ``exp(-sum p log p)``, ``p = sigma / sum(sigma)``; 0 for an all-zero block.

    Smooth: finite gradients at rank-deficient blocks (via ``eps``) and at all-zero blocks
    (where the value is 0 and the gradient 0).
    """
    _check_svdvals(sigma)
    check_number("eps", eps, minimum=0, strict=True)  # eps = 0 makes 0 * log(0) = NaN
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
    _check_temperature(temperature)
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
    check_number("eps", eps, minimum=0, strict=True)
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
    _check_temperature(temperature)
    sigma = hankel_svdvals(x, indices, **spectra_options)
    return soft_tolerance_ess_from_svdvals(sigma, tol, relative, temperature)


def _check_ess(ess: torch.Tensor, min_dim: int, name: str = "ess", floating: bool = True) -> None:
    if not isinstance(ess, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of ESS values, got {type(ess).__name__}")
    if not (ess.is_floating_point() or (not floating and not ess.is_complex() and ess.dtype != torch.bool)):
        raise ValueError(f"{name} must be a {'floating-point' if floating else 'real'} tensor, got dtype {ess.dtype}")
    if ess.dim() < min_dim or ess.shape[-1] < 1:
        raise ValueError(f"{name} needs at least {min_dim} dim(s) and a non-empty last (index) dim, "
                         f"got shape {tuple(ess.shape)}")


def average_ess(ess: torch.Tensor) -> torch.Tensor:
    """Average ESS: the mean over sequence indices (the last dim)."""
    _check_ess(ess, 1)
    return ess.mean(-1)


def total_ess(ess: torch.Tensor, multiplicity: int = 1, channel_dim: int = -2) -> torch.Tensor:
    """Total ESS: the sum over channels, each counted ``multiplicity`` times (value channels
    sharing one operator).  ``ess`` is ``(..., channels, indices)`` by default."""
    _check_ess(ess, 1, floating=False)
    _check_multiplicity(multiplicity)
    check_int("channel_dim", channel_dim)
    if not -ess.dim() <= channel_dim < ess.dim():
        raise ValueError(f"channel_dim={channel_dim} is not a dim of ess with shape {tuple(ess.shape)}")
    return ess.sum(channel_dim) * multiplicity


ESS_KINDS = {"entropy": entropy_ess_from_svdvals, "tolerance": tolerance_ess_from_svdvals,
             "soft_tolerance": soft_tolerance_ess_from_svdvals}


def _check_ess_options(kind: str, ess_options: Mapping | None) -> None:
    """``ess_options``: a mapping of keyword arguments that the ``kind`` of ESS takes."""
    if ess_options is None:
        return
    if not isinstance(ess_options, Mapping):
        raise TypeError(f"ess_options must be a mapping of keyword arguments, got {type(ess_options).__name__}")
    allowed = [p for p in inspect.signature(ESS_KINDS[kind]).parameters if p != "sigma"]
    unknown = sorted(set(ess_options) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"ess_options {unknown} are not options of the {kind} ESS; it takes {allowed}")


@dataclass
class LayerESS:
    """ESS of one layer's operator: ``values`` is ``(batch, channels, len(indices))``."""

    values: torch.Tensor
    indices: torch.Tensor
    multiplicity: int

    def __post_init__(self):
        _check_ess(self.values, 3, "values")
        if self.values.dim() != 3:
            raise ValueError(f"values must be (batch, channels, len(indices)), got shape {tuple(self.values.shape)}")
        idx = self.indices
        if (not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.is_floating_point() or idx.is_complex()
                or idx.dtype == torch.bool or len(idx) != self.values.shape[-1] or bool((idx < 1).any())):
            raise ValueError(f"indices must be a 1-D integer tensor of sequence indices >= 1, one per column of "
                             f"values ({self.values.shape[-1]}), got {idx!r}")
        _check_multiplicity(self.multiplicity)

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
    if not isinstance(kind, str) or kind not in ESS_KINDS:
        raise ValueError(f"unknown ESS kind {kind!r}; choose one of {sorted(ESS_KINDS)}")
    if not isinstance(operators, Mapping):
        raise TypeError(f"operators must be a mapping of layer names to operators, got {type(operators).__name__}")
    if not operators:
        raise ValueError("no operators given: the model has no ESS-capable layer")
    _check_ess_options(kind, ess_options)
    result = {}
    for name, x in operators.items():
        try:
            op = as_operator(x)
        except (TypeError, ValueError) as err:
            raise type(err)(f"operators[{name!r}]: {err}") from None
        result[name] = operator_ess(op, kind, resolve_indices(indices, op.seq_len), name=name,
                                    ess_options=ess_options, **spectra_options)
    return result


def check_layer_batch(op: Operator, name: str) -> None:
    """A layer's operator is ``(batch, channels)`` or ``(channels,)`` in its batch dims."""
    if len(op.batch_shape) not in (1, 2):
        raise ValueError(f"layer {name!r}: operator batch shape must be (batch, channels) or (channels,), "
                         f"got {tuple(op.batch_shape)}")


def operator_ess(op: Operator, kind: str, idx: torch.Tensor, *, name: str = "operator",
                 ess_options: Mapping | None = None, **spectra_options) -> LayerESS:
    """ESS of one operator at validated indices ``idx`` (``kind`` and ``ess_options`` checked by
    the caller), shaped ``(batch, channels, indices)``: what :func:`layer_ess` does per layer."""
    check_layer_batch(op, name)
    values = ESS_KINDS[kind](hankel_svdvals(op, idx, **spectra_options), **(ess_options or {}))
    if values.dim() == 2:
        values = values.unsqueeze(0)
    return LayerESS(values=values, indices=idx, multiplicity=op.multiplicity)
