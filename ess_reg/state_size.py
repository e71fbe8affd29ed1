"""What a layer's state size is: its theoretical state size (TSS) per channel, at each index,
and the reachable state ``min(i, L - i, TSS)`` that the ESS of block ``H_i`` is read against.

The vocabulary every part of ess-reg shares (the layer contract, the zoo, the adapters, the
probe, the reports), kept apart from the reports and the verdict that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._checks import check_int
from .indices import resolve_indices
from .operators.checks import shape_rank

__all__ = ["StateSize", "growing_state_size", "chunked_state_size", "tss_at", "reachable_state"]

# A mixer's TSS per channel: a number (SSM state N, linear-attention feature size, SWA window),
# or a function of (indices, L) for layers whose state grows with the sequence.
StateSize = int | float | Callable[[torch.Tensor, int], torch.Tensor]


def growing_state_size(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """TSS of softmax attention and long convolutions: ``min(i, L - i)``.

    The KV cache (or the convolution's input history) holds all ``i`` past tokens, and no block
    ``H_i`` can have rank above ``min(i, L - i)``.
    """
    idx = resolve_indices(indices, seq_len)  # validates both; a valid tensor is used as given
    return shape_rank(indices if isinstance(indices, torch.Tensor) else idx, seq_len)


def tss_at(
    tss: StateSize, indices: "int | Sequence[int] | torch.Tensor | None", seq_len: int
) -> torch.Tensor:
    """TSS at each requested index, as a float64 tensor ``(len(indices),)``."""
    idx = resolve_indices(indices, seq_len)
    if callable(tss):
        return torch.as_tensor(tss(idx, seq_len), dtype=torch.float64)
    if isinstance(tss, bool) or not isinstance(tss, (int, float)) or not tss >= 0:
        raise ValueError(f"a state size must be a non-negative number or a function of (indices, L), got {tss!r}")
    return torch.full(idx.shape, float(tss), dtype=torch.float64)


def chunked_state_size(chunk: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """TSS of attention within blocks of ``chunk`` tokens (Llama 4's chunked layers): the block
    ``H_i`` links the block's tokens before ``i`` to those from ``i`` on, so its rank is at most
    ``min(i mod C, min(start + C, L) - i)``, 0 at a block's start."""
    check_int("chunk", chunk, 1)

    def tss(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
        start = indices - indices % chunk
        return torch.minimum(indices % chunk, torch.clamp(start + chunk, max=seq_len) - indices)
    return tss


def reachable_state(tss: torch.Tensor, indices: torch.Tensor, seq_len: int,
                    io_width: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The most rank any block ``H_i`` of the operator can have: ``min(i, L - i, TSS_i)``.

    ``H_i`` is ``(L - i) x i``, so even a full state cannot show more than ``min(i, L - i)``
    there: at ``i = 1`` a state of 16 reaches 1. A multi-channel operator (a Jacobian, with
    ``io_width = (D_in, D_out)`` channels in and out) has blocks ``((L - i) D_out) x (i D_in)``.
    """
    for name, value in (("tss", tss), ("indices", indices)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    check_int("seq_len", seq_len, 2)
    try:
        torch.broadcast_shapes(tss.shape, indices.shape)
    except RuntimeError:
        raise ValueError(f"tss of shape {tuple(tss.shape)} does not match indices of shape "
                         f"{tuple(indices.shape)}") from None
    if io_width == (1, 1):
        shape = growing_state_size(indices, seq_len)  # validates the indices too
    else:
        shape = shape_rank(indices, seq_len, io_width)
    return torch.minimum(shape.to(torch.float64), tss.to(torch.float64))
