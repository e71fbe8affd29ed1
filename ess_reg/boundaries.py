"""How a layer's memory changes around boundary tokens (separators, end of sequence).

The ESS at sequence index ``i`` measures what the layer carries from positions ``< i`` to
positions ``>= i``. A layer that resets its memory at a boundary carries almost nothing across
it: its ESS drops at the index just after the boundary token. Attention layers trained on
packed documents do this; a linear attention barely can (its state only decays). The profile
is the ESS at the indices around each boundary token, averaged over boundaries, operators and
examples; the modulation is its relative drop across the boundary.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from .layer_report import LayerReport

__all__ = ["boundary_positions", "boundary_profile", "boundary_modulation", "profile_drop"]


def boundary_positions(inputs: torch.Tensor, separators: Collection[int]) -> list[tuple[int, int]]:
    """``(example, position)`` of every separator token in ``inputs``, ``(batch, L)`` token ids."""
    if not torch.is_tensor(inputs) or inputs.dim() != 2 or inputs.is_floating_point():
        raise ValueError(f"inputs must be token ids of shape (batch, L), got "
                         f"{tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__}")
    if isinstance(separators, (str, bytes)) or not isinstance(separators, Collection) or not separators:
        raise ValueError(f"separators must be a non-empty collection of token ids, got {separators!r}")
    marks = torch.isin(inputs, torch.as_tensor(list(separators), dtype=inputs.dtype, device=inputs.device))
    return [(int(b), int(p)) for b, p in marks.nonzero().tolist()]


def boundary_profile(report: LayerReport, inputs: torch.Tensor, separators: Collection[int],
                     window: int = 4) -> torch.Tensor:
    """ESS at offsets ``-window .. window`` around each boundary, ``(2 window + 1,)``: offset 0 is
    the index just after the boundary token (its split puts the token in the past), offset
    ``-1`` the index just before it. Averaged over the boundaries of ``inputs`` (the examples the
    report measured, in order), the layer's operators and the measured indices that fall there;
    NaN at an offset no boundary reaches. Measure with every index (``indices="all"``) for a
    full profile."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    values = report.ess.values  # (batch, channels, len(indices))
    inputs = inputs[: values.shape[0]]
    column = {int(i): k for k, i in enumerate(report.ess.indices.tolist())}
    sums = torch.zeros(2 * window + 1, dtype=torch.float64)
    counts = torch.zeros(2 * window + 1, dtype=torch.float64)
    for b, p in boundary_positions(inputs, separators):
        for offset in range(-window, window + 1):
            k = column.get(p + 1 + offset)
            if k is not None:
                sums[offset + window] += values[b, :, k].detach().double().mean().cpu()
                counts[offset + window] += 1
    if counts.sum() == 0:
        raise ValueError(f"no measured index lies within {window} of a boundary token {sorted(separators)} in "
                         f"layer {report.name!r}: do the inputs hold a separator, and were the indices around it "
                         "measured (indices='all')?")
    return sums / counts


def boundary_modulation(report: LayerReport, inputs: torch.Tensor, separators: Collection[int],
                        window: int = 4) -> float:
    """The relative drop of ESS across boundaries: ``1 - ESS just after / ESS before``, where
    "just after" is the index right after the boundary token (offset 0 of the profile) and
    "before" the mean over the ``window`` indices before it. 1: the layer carries nothing across a
    boundary; 0: a boundary does not change what it carries. (Past the boundary the ESS grows
    back as the new segment is read, so the drop is read where it is.)"""
    return profile_drop(boundary_profile(report, inputs, separators, window), window)


def profile_drop(profile: torch.Tensor, window: int) -> float:
    """A profile's relative drop, ``1 - profile[window] / mean(profile[:window])`` over what was
    measured; NaN where nothing was, before or just after."""
    before, after = profile[:window], profile[window]
    before = before[~before.isnan()]
    if not len(before) or after.isnan() or before.mean() == 0:
        return float("nan")
    return float(1 - after / before.mean())
