"""ESS as a loss term, and the paper's indirect baseline, for any model with ESS-capable layers.

Both regularizers read the operators of the forward pass you already run::

    penalty = ESSPenalty(model, mode="maximize", weight=0.1)
    with penalty.capture():
        logits = model(x)                      # the one forward pass; layer inputs are recorded
    loss = task_loss(logits) + penalty.compute(step)

Each layer's operator is rebuilt from its recorded input (one extra projection per layer, no
second forward of the model), so gradients reach every mixer parameter through its operator.
``penalty(x, step)`` does the forward itself, for when the logits are not needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_int, check_limit, check_number, check_seed
from .diagnose import reachable_state, tss_at, utilization
from .ess import _check_temperature, _check_tol, entropy_ess_from_svdvals, soft_tolerance_ess_from_svdvals
from .operators import StateSpaceOperator
from .probe import _adapter_for, capture_operators
from .spectra import _index_tensor, hankel_svdvals, resolve_indices

__all__ = ["ESSPenalty", "DecayIdentityPenalty", "MODES", "INDEX_CHOICES"]

MODES = ("maximize", "minimize", "target")
INDEX_CHOICES = ("random", "all", "context_end")
HINGES = ("two_sided", "below", "above")


def _check_task(task) -> None:
    """A task (or anything with its ``context_end`` and ``items_to_recall``), or None."""
    if task is not None and not all(hasattr(task, a) for a in ("context_end", "items_to_recall")):
        raise TypeError(f"task must be a task (with context_end and items_to_recall) or None, got {task!r}")


class _OperatorRegularizer(nn.Module):
    """Shared plumbing: which layers, the weight schedule, capture of the forward pass."""

    def __init__(self, model: nn.Module, weight: float, layers: Sequence[str] | None,
                 warmup_steps: int, ramp_steps: int, batch_limit: int | None, task=None):
        super().__init__()
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        for name, value in (("warmup_steps", warmup_steps), ("ramp_steps", ramp_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        check_limit("batch_limit", batch_limit)
        _check_task(task)
        self.model = [model]  # a list: not registered as a submodule (no double parameters)
        self.weight, self.warmup_steps, self.ramp_steps = float(weight), warmup_steps, ramp_steps
        self.batch_limit = batch_limit
        self.layer_names = layers
        self.task = task  # optional: where the context ends and how many items it holds
        self._capture = capture_operators(model, layers)  # validates: raises without ESS-capable layers

    def weight_at(self, step: int | None) -> float:
        """0 for steps ``1..warmup_steps`` (steps count from 1, as in the training loop), then a
        linear ramp reaching ``weight`` at step ``warmup_steps + ramp_steps``."""
        if step is None:
            return self.weight
        check_int("step", step, 0)
        if self.warmup_steps and step <= self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return self.weight
        return self.weight * min(1.0, (step - self.warmup_steps) / self.ramp_steps)

    def capture(self) -> capture_operators:
        self._capture = capture_operators(self.model[0], self.layer_names)
        return self._capture

    def _operators(self) -> dict:
        if not self._capture.inputs:
            raise RuntimeError("no forward pass was captured: call the model inside `with penalty.capture():`")
        return self._capture.operators(self.batch_limit, self._pick_channels)

    def _pick_channels(self, num_channels: int) -> torch.Tensor | None:
        return None

    def compute(self, step: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, step: int | None = None) -> torch.Tensor:
        with self.capture():
            self.model[0](inputs)
        return self.compute(step)

    def check(self, inputs: torch.Tensor) -> None:
        """Raise ``ValueError`` unless the term can act on the model: run it once on ``inputs``
        (a few examples suffice) and require a gradient path to some parameter. Leaves the
        term's random state as it was."""
        if self.weight == 0:
            return
        state = self._random_state()
        try:
            with torch.enable_grad():
                value = self(inputs)
        finally:
            self._set_random_state(state)
        if not value.requires_grad:
            raise ValueError(f"{type(self).__name__} has nothing to act on in this model: its value does not "
                             f"depend on any parameter of the layers {sorted(self._capture.layers)}")

    def _random_state(self):
        return None

    def _set_random_state(self, state) -> None:
        pass


class ESSPenalty(_OperatorRegularizer):
    """A differentiable ESS term.

    Args:
        mode: ``"maximize"`` utilization, ESS over the reachable state ``min(i, L - i, TSS)``
            (:func:`ess_reg.diagnose.utilization`; counters state collapse), ``"minimize"`` it
            (compressible, distillation-friendly models), or ``"target"``: pull utilization (or
            ESS/kv with ``target_on="per_item"``) toward ``target``.
        weight: multiplier (>= 0); scheduled by ``warmup_steps`` then a ``ramp_steps`` ramp.
        indices: ``"random"`` (``num_indices`` fresh random indices per step), ``"all"``,
            ``"context_end"`` (MQAR: where all key-value pairs have been read), or a list.
        layers: names of the layers to use (default all ESS-capable layers).
        kind: ``"entropy"`` (effective rank) or ``"soft_tolerance"`` (sigmoid-relaxed count).
        hinge: for ``target``: ``"two_sided"``, ``"below"`` (only penalize falling short) or
            ``"above"``; ``squared`` squares the gap.
        batch_limit: use only the first examples of the batch (cost control).
        channel_limit: use this many random channels (heads) of each layer per step (cost
            control for layers with many channels, e.g. ``s6``'s ``expand * d_model``); the
            mean over channels stays an unbiased estimate, as with random indices.
        task: a task to read ``context_end`` / ``items_to_recall`` from (explicit values win).
    """

    def __init__(self, model: nn.Module, mode: str = "maximize", weight: float = 0.01, *,
                 indices: "str | Sequence[int]" = "random", num_indices: int = 8, layers: Sequence[str] | None = None,
                 kind: str = "entropy", target: float | None = None, target_on: str = "utilization",
                 hinge: str = "two_sided", squared: bool = True, context_end: int | None = None,
                 items_to_recall: int | None = None, tol: float = 1e-2, temperature: float = 0.5,
                 warmup_steps: int = 0, ramp_steps: int = 0, batch_limit: int | None = None,
                 channel_limit: int | None = None, seed: int = 0, task=None):
        super().__init__(model, weight, layers, warmup_steps, ramp_steps, batch_limit, task)
        self.channel_limit = check_limit("channel_limit", channel_limit)
        if task is not None:
            context_end = task.context_end if context_end is None else context_end
            items_to_recall = task.items_to_recall if items_to_recall is None else items_to_recall
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if kind not in ("entropy", "soft_tolerance"):
            raise ValueError(f"kind must be 'entropy' or 'soft_tolerance' (differentiable), got {kind!r}")
        if isinstance(indices, str) and indices not in INDEX_CHOICES:
            raise ValueError(f"unknown indices {indices!r}; choose one of {INDEX_CHOICES} or give a list")
        if not isinstance(indices, str):  # a list: its upper end is checked per forward pass (L is not known yet)
            listed = _index_tensor(indices)
            if bool((listed < 1).any()):
                raise ValueError(f"indices must lie in 1..L-1 (H_i = T[i:, :i] is empty otherwise); got "
                                 f"{listed[listed < 1].tolist()[:8]}")
            indices = listed.tolist() if isinstance(indices, torch.Tensor) else indices
        check_limit("context_end", context_end)
        check_limit("items_to_recall", items_to_recall)
        if indices == "context_end" and context_end is None:
            raise ValueError("indices='context_end' needs context_end (the index where the context ends)")
        if isinstance(num_indices, bool) or not isinstance(num_indices, int) or num_indices < 1:
            raise ValueError(f"num_indices must be a positive int, got {num_indices!r}")
        if target_on not in ("utilization", "per_item"):
            raise ValueError(f"target_on must be 'utilization' or 'per_item', got {target_on!r}")
        if mode == "target" and target is None:
            raise ValueError(f"mode='target' needs a finite target >= 0, got {target!r}")
        if target is not None:
            check_number("target", target, minimum=0)
        if not isinstance(hinge, str) or hinge not in HINGES:
            raise ValueError(f"unknown hinge {hinge!r}; choose one of {HINGES}")
        _check_tol(tol, relative=True)
        _check_temperature(temperature)
        if target_on == "per_item" and (not items_to_recall or context_end is None):
            raise ValueError("target_on='per_item' needs items_to_recall and context_end (ESS/kv is read there)")
        self.mode, self.indices, self.num_indices, self.kind = mode, indices, num_indices, kind
        self.target, self.target_on, self.hinge, self.squared = target, target_on, hinge, squared
        self.context_end, self.items_to_recall, self.tol, self.temperature = context_end, items_to_recall, tol, temperature
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))
        self.last: dict[str, float] = {}

    def _indices(self, seq_len: int) -> torch.Tensor:
        if self.target_on == "per_item" or self.indices == "context_end":
            if self.context_end > seq_len - 1:
                raise ValueError(f"context_end={self.context_end} lies past the sequence (indices 1..L-1 = "
                                 f"1..{seq_len - 1})")
            return resolve_indices([self.context_end], seq_len)
        if self.indices == "all":
            return resolve_indices(None, seq_len)
        if self.indices == "random":
            k = min(self.num_indices, seq_len - 1)
            return torch.randperm(seq_len - 1, generator=self.generator)[:k] + 1
        return resolve_indices(list(self.indices), seq_len)

    def _random_state(self):
        return self.generator.get_state()

    def _set_random_state(self, state) -> None:
        self.generator.set_state(state)

    def _pick_channels(self, num_channels: int) -> torch.Tensor | None:
        """``channel_limit`` random channels of a layer, fresh each step (``None``: all)."""
        if self.channel_limit is None or num_channels <= self.channel_limit:
            return None
        return torch.randperm(num_channels, generator=self.generator)[: self.channel_limit]

    def _ess(self, op, idx: torch.Tensor) -> torch.Tensor:
        sigma = hankel_svdvals(op, idx, dtype=torch.float32)
        if self.kind == "entropy":
            return entropy_ess_from_svdvals(sigma)
        return soft_tolerance_ess_from_svdvals(sigma, self.tol, True, self.temperature)

    def compute(self, step: int | None = None) -> torch.Tensor:
        """The weighted penalty for the captured forward pass (a scalar with gradients)."""
        weight = self.weight_at(step)
        if weight == 0:  # warm-up: no spectra to compute
            self.last = {"weight": 0.0}
            return torch.zeros(())
        terms = []
        for name, op in self._operators().items():
            idx = self._indices(op.seq_len)
            ess = self._ess(op, idx)  # (..., channels, k)
            per_index = ess.reshape(-1, ess.shape[-1]).mean(0)  # mean over batch and channels
            if self.target_on == "per_item":
                terms.append(per_index.mean() / self.items_to_recall)
                continue
            module = self._capture.layers[name]
            tss = tss_at(_adapter_for(module).state_size(module), idx, op.seq_len)
            try:
                terms.append(utilization(per_index, reachable_state(tss, idx, op.seq_len)))
            except ValueError as err:
                raise ValueError(f"layer {name!r}: {err}") from None
        value = torch.stack(terms).mean()
        self.last = {"measure": value.item(), "weight": weight}
        if self.mode == "maximize":
            penalty = -value
        elif self.mode == "minimize":
            penalty = value
        else:
            gap = value - self.target
            if self.hinge == "below":
                gap = gap.clamp(max=0)
            elif self.hinge == "above":
                gap = gap.clamp(min=0)
            penalty = gap.square() if self.squared else gap.abs()
        self.last["value"] = penalty.item()
        return weight * penalty


class DecayIdentityPenalty(_OperatorRegularizer):
    """The paper's indirect regularizer: ``weight * ||A - I||_F`` on the (diagonal) decays of every
    state-space layer (``gla``, ``wla``, ``s6``...), averaged over steps, channels and batch; pulls
    decays toward 1, i.e. toward plain linear attention."""

    def __init__(self, model: nn.Module, weight: float = 0.1, *, layers: Sequence[str] | None = None,
                 warmup_steps: int = 0, ramp_steps: int = 0, batch_limit: int | None = None, task=None):
        super().__init__(model, weight, layers, warmup_steps, ramp_steps, batch_limit, task)
        self.last: dict[str, float] = {}

    def compute(self, step: int | None = None) -> torch.Tensor:
        weight = self.weight_at(step)
        norms = [torch.linalg.vector_norm(torch.expm1(op.log_decay), dim=-1).mean()
                 for op in self._operators().values() if isinstance(op, StateSpaceOperator)]
        if not norms:
            raise ValueError("decay_identity needs state-space layers (gla, wla, s6, ...); this model has none")
        value = torch.stack(norms).mean()
        if torch.is_grad_enabled() and not value.requires_grad:
            raise ValueError("decay_identity has nothing to act on in this model: no layer's decay depends on a "
                             "parameter (la's decays are fixed at 1, so ||A - I|| is always 0)")
        self.last = {"value": value.item(), "measure": value.item(), "weight": weight}
        return weight * value
