"""ESS-guided state compression: shrink a trained model's state toward what it uses.

A model whose measured ESS is far below its TSS holds state it does not use. In a diagonal
state-space layer (linear attention and its decayed variants, S4D, S6) each state coordinate
``n`` is its own recurrence, and the layer's operator is the sum of one operator per coordinate,
``T = sum_n T_n`` with ``T_n[i, j] = C_i[n] exp(sum_{t=j+1..i} log_decay_t[n]) B_j[n]``. A
coordinate whose ``T_n`` is small over the data contributes little to any output; dropping it
leaves the others exactly as they were. :func:`compress_state` scores every coordinate by its
energy ``||T_n||_F^2`` on a batch of the user's inputs (the Gramian energy of that coordinate:
the sum of its squared impulse responses), and asks each layer to keep the ``size`` best.

How a layer keeps coordinates is its own business, written down as :class:`StateCompressible`:
linear attention keeps the best features of each head; S6, whose ``B`` and ``C`` are shared by
all channels, keeps the coordinates best summed over its channels; S4D keeps the best of each
channel. A time-invariant layer can do better than drop (:class:`StateMergeable`,
``method="merge"``): its operator is a convolution with ``h[k] = sum_n r_n a_n^k``, so it can
choose its poles ``a_n`` one at a time and refit the residues ``r_n`` of those it keeps to the
whole ``h`` (:func:`fit_modes`), which merges what the dropped coordinates carried into the kept
ones wherever their responses overlap. :func:`state_size_from_ess` reads the size the measured ESS suggests: the largest
tolerance-ESS over the probed indices, examples and channels of a layer (the worst case), or
the entropy-ESS averaged over the examples (the typical use).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .ess import DEFAULT_TOL, entropy_ess_from_svdvals, tolerance_ess_from_svdvals
from .operators import DiagonalState
from .probe import capture_operators
from .spectra import hankel_svdvals

__all__ = ["StateCompressible", "StateMergeable", "StateCut", "coordinate_energy", "state_energy", "compress_state",
           "fit_modes", "state_size_from_ess"]
METHODS = ("keep", "merge")


@runtime_checkable
class StateCompressible(Protocol):
    """A layer whose state coordinates can be dropped.

    ``keep_state(scores, size)`` gets a score per operator (batch dim 1 of the layer's operator:
    a head, a channel) and state coordinate, shape ``(C, N)``, keeps ``size`` coordinates by
    them, changing its parameters in place so that its operator is the kept coordinates' part
    of the old one, and returns the kept coordinates per operator, ``(C, size)`` (the same row
    repeated where its coordinates are shared by all operators)."""

    def keep_state(self, scores: torch.Tensor, size: int) -> torch.Tensor: ...


@runtime_checkable
class StateMergeable(Protocol):
    """A time-invariant layer that can merge its state into fewer coordinates.

    ``merge_state(size, length)`` replaces each operator's (channel's) state by ``size``
    coordinates whose operator over ``length`` steps is the closest it can make to the old one
    in Frobenius norm (:func:`fit_modes`), changing its parameters in place; it returns the
    kept coordinates ``(C, size)`` and the share of each operator's energy the new one
    reproduces, ``1 - ||T - T_new||_F^2 / ||T||_F^2``, ``(C,)``."""

    def merge_state(self, size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def fit_modes(log_poles: torch.Tensor, residues: torch.Tensor, size: int,
              length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``size`` of a time-invariant diagonal system's modes, with refit residues.

    A system of poles ``a_n = exp(log_poles_n)`` and residues ``r_n`` (each ``(C, N)``, real)
    has the impulse response ``h[k] = sum_n r_n a_n^k`` and the causal Toeplitz operator
    ``T[i, j] = h[i - j]`` over ``length`` steps, whose squared Frobenius norm weighs lag ``k``
    by ``length - k``. Poles are chosen one at a time (each step adds the pole whose
    least-squares refit of all the kept poles' residues leaves the least of ``T``), and the
    kept poles' residues are the least-squares fit of the whole ``h`` in that norm: exact
    wherever ``h`` is a combination of ``size`` of the modes (poles that repeat count once).
    Computed in float64. Returns ``(kept (C, size) in ascending order, residues (C, size),
    fit (C,))``, ``fit = 1 - ||T - T_new||_F^2 / ||T||_F^2``."""
    if log_poles.shape != residues.shape or log_poles.dim() != 2:
        raise ValueError(f"log_poles and residues must both be (C, N), got {tuple(log_poles.shape)} and "
                         f"{tuple(residues.shape)}")
    n = log_poles.shape[-1]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
        raise ValueError(f"size must be an int in 1..{n} (the modes), got {size!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    lp, r = log_poles.detach().cpu().double(), residues.detach().cpu().double()
    lags = torch.arange(length, dtype=torch.float64)
    # each mode's response, weighted so that Euclidean norms over lags are Frobenius norms of T
    modes = torch.exp(lags[:, None] * lp[:, None, :]) * (length - lags).sqrt()[:, None]  # (C, L, N)
    target = modes @ r[..., None]  # (C, L, 1)
    kept = torch.empty(lp.shape[0], 0, dtype=torch.long)
    for _ in range(size):
        # every candidate beside the kept poles: (C, N, L, |kept| + 1)
        design = torch.cat([_columns(modes, kept).unsqueeze(1).expand(-1, n, -1, -1),
                            modes.transpose(1, 2).unsqueeze(-1)], dim=-1)
        residual = _lstsq_residual(design, target.unsqueeze(1).expand(-1, n, -1, -1))  # (C, N)
        residual.scatter_(-1, kept, math.inf)
        kept = torch.cat([kept, residual.argmin(-1, keepdim=True)], dim=-1)
    kept = kept.sort(-1).values
    design = _columns(modes, kept)  # (C, L, size)
    solution = torch.linalg.lstsq(design, target, driver="gelsd").solution
    total = target.square().sum((-2, -1))
    error = (design @ solution - target).square().sum((-2, -1))
    fit = torch.where(total > 0, 1 - error / total.clamp_min(torch.finfo(total.dtype).tiny), torch.ones_like(total))
    return kept.to(log_poles.device), solution[..., 0].to(residues.device), fit.to(residues.device)


def _columns(modes: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``modes (C, L, N)``'s columns ``kept (C, k)`` of each row: ``(C, L, k)``."""
    return modes.gather(-1, kept.unsqueeze(1).expand(-1, modes.shape[1], -1))


def _lstsq_residual(design: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``min_x ||design x - target||^2`` for every batch element (rank-deficient designs too)."""
    solution = torch.linalg.lstsq(design, target, driver="gelsd").solution
    return (design @ solution - target).square().sum((-2, -1))


@dataclass
class StateCut:
    """What :func:`compress_state` did to one layer."""

    layer: str
    before: int                 # state coordinates per operator before
    after: int                  # and after
    kept: torch.Tensor          # (C, after): the kept coordinates of each operator
    energy_kept: torch.Tensor   # (C,): the share of each operator's energy the kept coordinates carry
    # ("merge": the share the new operator reproduces, 1 - ||T - T_new||^2 / ||T||^2)
    method: str = "keep"

    def __str__(self) -> str:
        share = self.energy_kept
        what = "energy kept" if self.method == "keep" else "energy reproduced (merged)"
        return (f"{self.layer}: state {self.before} -> {self.after}, {what} {share.mean():.4f} "
                f"(min over {share.numel()} operators {share.min():.4f})")


def coordinate_energy(op: DiagonalState) -> torch.Tensor:
    """``||T_n||_F^2`` for every state coordinate ``n`` of a diagonal recurrence: shape
    ``(*batch_shape, N)`` (see :meth:`StateSpaceOperator.coordinate_energy`)."""
    if not isinstance(op, DiagonalState):
        raise TypeError(f"coordinate energies need a StateSpaceOperator (a diagonal recurrence), got "
                        f"{type(op).__name__}")
    return op.coordinate_energy()


def _operators(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_operators(model, layers) as capture:
            model(inputs)
        return capture.layers, capture.operators()
    finally:
        model.train(was_training)


def _energies(modules: Mapping[str, nn.Module], ops: Mapping[str, object], explicit: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, op in ops.items():
        if not isinstance(op, DiagonalState) or len(op.batch_shape) != 2:
            if explicit:
                raise ValueError(f"layer {name!r} ({type(modules[name]).__name__}) applies a "
                                 f"{type(op).__name__}, not a diagonal recurrence of batch shape (B, C): its state "
                                 "has no coordinates to drop")
            continue
        out[name] = coordinate_energy(op).mean(0)  # (C, N): mean over the examples
    return out


def state_energy(model: nn.Module, inputs: torch.Tensor,
                 layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Each diagonal state-space layer's coordinate energies on ``inputs``, ``(C, N)`` per layer
    (mean over the examples): what :func:`compress_state` ranks coordinates by."""
    modules, ops = _operators(model, inputs, layers)
    return _energies(modules, ops, explicit=layers is not None)


def compress_state(model: nn.Module, inputs: torch.Tensor, size: int | Mapping[str, int],
                   layers: Sequence[str] | None = None, method: str = "keep") -> dict[str, StateCut]:
    """Keep ``size`` state coordinates per operator in every diagonal state-space layer of
    ``model`` (or in ``layers``; ``size`` may be a mapping layer name -> size), chosen by their
    energy on ``inputs`` (a batch the model reads, e.g. token ids). Changes the model in place;
    returns what was cut per layer. Fine-tune afterwards: the kept coordinates' part of each
    operator is exact, the rest of the model has not yet adapted to the loss of the others.

    ``method="merge"`` (time-invariant layers, :class:`StateMergeable`: the zoo's ``s4d``):
    choose the coordinates and refit their residues to the whole operator over the inputs'
    length (:func:`fit_modes`) instead of dropping the others."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    modules, ops = _operators(model, inputs, layers)
    energies = _energies(modules, ops, explicit=layers is not None)
    if not energies:
        raise ValueError(f"{type(model).__name__} has no diagonal state-space layer to compress")
    if isinstance(size, Mapping):
        unknown = sorted(set(size) - set(energies))
        if unknown:
            raise ValueError(f"size names {unknown}, which are not compressible layers; they are {sorted(energies)}")
        energies = {name: e for name, e in energies.items() if name in size}
    plan = {}
    for name, energy in energies.items():  # every check before the first layer changes
        module, n = modules[name], energy.shape[-1]
        r = size[name] if isinstance(size, Mapping) else size
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= n:
            raise ValueError(f"size for layer {name!r} must be an int in 1..{n} (its state), got {r!r}")
        if method == "merge" and not isinstance(module, StateMergeable):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no merge_state(size, length): only a "
                             "time-invariant layer can merge (ess_reg.compression.StateMergeable); use method='keep'")
        if not isinstance(module, StateCompressible):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no keep_state(scores, size): see "
                             "ess_reg.compression.StateCompressible")
        plan[name] = r
    cuts = {}
    for name, r in plan.items():
        energy = energies[name]
        if method == "merge":
            kept, reproduced = modules[name].merge_state(r, int(inputs.shape[1]))
        else:
            kept = modules[name].keep_state(energy, r)
            total = energy.sum(-1).clamp_min(torch.finfo(energy.dtype).tiny)
            reproduced = energy.gather(-1, kept).sum(-1) / total
        cuts[name] = StateCut(name, energy.shape[-1], r, kept, reproduced, method)
    return cuts


def state_size_from_ess(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None = None, *,
                        indices: Sequence[int] | None = None, tol: float = DEFAULT_TOL,
                        measure: str = "tolerance") -> dict[str, int]:
    """The state each diagonal state-space layer uses on ``inputs``, rounded up.

    ``measure="tolerance"``: the largest tolerance-ESS (``tol``, relative) over ``indices``
    (default every index), examples and operators, the worst case: a layer of this size can
    realize everything the measured operators do at those indices. ``measure="entropy"``: the
    typical use, the entropy-ESS averaged over the examples, then the largest over ``indices``
    and operators (heads, channels)."""
    if measure not in ("tolerance", "entropy"):
        raise ValueError(f"measure must be 'tolerance' or 'entropy', got {measure!r}")
    modules, ops = _operators(model, inputs, layers)
    out = {}
    for name in _energies(modules, ops, explicit=layers is not None):
        sigma = hankel_svdvals(ops[name], indices)  # (B, C, K, r)
        if measure == "tolerance":
            size = tolerance_ess_from_svdvals(sigma, tol).max()
        else:
            size = entropy_ess_from_svdvals(sigma).mean(0).max()
        out[name] = max(1, int(math.ceil(size.item() - 1e-9)))  # 4.0000001 from round-off is 4
    return out
