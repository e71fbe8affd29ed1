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
channel. :func:`state_size_from_ess` reads the size the measured ESS suggests: the largest
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

__all__ = ["StateCompressible", "StateCut", "coordinate_energy", "state_energy", "compress_state",
           "state_size_from_ess"]


@runtime_checkable
class StateCompressible(Protocol):
    """A layer whose state coordinates can be dropped.

    ``keep_state(scores, size)`` gets a score per operator (batch dim 1 of the layer's operator:
    a head, a channel) and state coordinate, shape ``(C, N)``, keeps ``size`` coordinates by
    them, changing its parameters in place so that its operator is the kept coordinates' part
    of the old one, and returns the kept coordinates per operator, ``(C, size)`` (the same row
    repeated where its coordinates are shared by all operators)."""

    def keep_state(self, scores: torch.Tensor, size: int) -> torch.Tensor: ...


@dataclass
class StateCut:
    """What :func:`compress_state` did to one layer."""

    layer: str
    before: int                 # state coordinates per operator before
    after: int                  # and after
    kept: torch.Tensor          # (C, after): the kept coordinates of each operator
    energy_kept: torch.Tensor   # (C,): the share of each operator's energy the kept coordinates carry

    def __str__(self) -> str:
        share = self.energy_kept
        return (f"{self.layer}: state {self.before} -> {self.after}, energy kept {share.mean():.4f} "
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
                   layers: Sequence[str] | None = None) -> dict[str, StateCut]:
    """Keep ``size`` state coordinates per operator in every diagonal state-space layer of
    ``model`` (or in ``layers``; ``size`` may be a mapping layer name -> size), chosen by their
    energy on ``inputs`` (a batch the model reads, e.g. token ids). Changes the model in place;
    returns what was cut per layer. Fine-tune afterwards: the kept coordinates' part of each
    operator is exact, the rest of the model has not yet adapted to the loss of the others."""
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
        if not isinstance(module, StateCompressible):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no keep_state(scores, size): see "
                             "ess_reg.compression.StateCompressible")
        plan[name] = r
    cuts = {}
    for name, r in plan.items():
        energy = energies[name]
        kept = modules[name].keep_state(energy, r)
        total = energy.sum(-1).clamp_min(torch.finfo(energy.dtype).tiny)
        cuts[name] = StateCut(name, energy.shape[-1], r, kept, energy.gather(-1, kept).sum(-1) / total)
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
