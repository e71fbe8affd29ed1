"""Checks and small helpers every operator kind shares: finite values scanned in slices, the
multiplicity, batch heads and selections of operator factors, and the shape bound on a block's rank."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .._checks import check_floating

def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = _nonfinite_count(x)  # slice by slice: no full-size temporary
    if bad:
        raise ValueError(f"{name} has {bad} NaN/Inf entries")


def _check_multiplicity(multiplicity: int) -> int:
    if isinstance(multiplicity, bool) or not isinstance(multiplicity, int) or multiplicity < 1:
        raise ValueError(f"multiplicity must be a positive int, got {multiplicity!r}")
    return multiplicity


# Validation scans a dense T in slices of at most this many bytes (at least one row), so its
# extra memory is one slice-sized buffer whatever the size of T: the whole-tensor checks held
# full-size |T|, triu and isfinite temporaries (about 2x T at peak).  Measured on 2 cores, one
# thread: 4 MiB slices are also the fastest (cache-sized; 0.25-16 MiB tried), 6-13x faster than
# the whole-tensor checks for T of 8-32 MiB.
_CHECK_CHUNK_BYTES = 4 * 2**20


def _slices(x: torch.Tensor, max_elems: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Views that cover ``x`` of shape ``(..., R, K)`` once, each of at most ``max_elems``
    entries (or one row, if a row is longer), with the index of each view's first row in its
    matrix (0 for views of whole matrices)."""
    if x.numel() <= max_elems:
        yield x, 0
        return
    if x.dim() > 2:
        per = x[0].numel()
        step = max(1, max_elems // max(per, 1))
        for start in range(0, x.shape[0], step):
            if per <= max_elems:
                yield x[start : start + step], 0
            else:  # one matrix (or more) per entry of dim 0 is too big: slice inside it
                yield from _slices(x[start], max_elems)
        return
    rows = max(1, max_elems // max(x.shape[-1], 1))
    for start in range(0, x.shape[0], rows):
        yield x[start : start + rows], start


def _nonfinite_count(x: torch.Tensor) -> int:
    """Number of NaN/Inf entries of ``x``, counted slice by slice (no full-size temporary)."""
    if x.numel() == 0:
        return 0
    max_elems = max(1, _CHECK_CHUNK_BYTES // x.element_size())
    with torch.no_grad():
        return sum(int((~torch.isfinite(part)).sum()) for part, _ in _slices(x, max_elems))


def _check_causal_and_finite(T: torch.Tensor, causal_rtol: float) -> None:
    """``T`` finite, and ``max|T above the diagonal| <= causal_rtol * max|T|``, in one pass over
    slices of ``T``: the extra memory is one buffer of ``|slice|`` (at most ``_CHECK_CHUNK_BYTES``
    or one row), reused from slice to slice, not a copy of ``T`` (a new buffer per slice left
    holes in the C heap that the next could not reuse: five builds of a 32 MiB T grew the
    process by up to 2.5x T).  Same verdicts and messages as the whole-tensor checks (maxima
    are exact; NaN/Inf counted over all of T)."""
    if T.numel() == 0:
        return
    max_elems = max(1, _CHECK_CHUNK_BYTES // T.element_size())
    upper = scale = buffer = None
    bad = 0
    with torch.no_grad():
        for part, row0 in _slices(T, max_elems):
            if bad:  # already invalid: only the count of bad entries is still needed
                bad += int((~torch.isfinite(part)).sum())
                continue
            if buffer is None or buffer.numel() < part.numel():
                buffer = torch.empty(part.numel(), dtype=T.dtype, device=T.device)
            magnitude = torch.abs(part, out=buffer[: part.numel()].view(part.shape))
            part_scale = magnitude.amax()  # NaN-propagating: a non-finite max flags the slice
            if not bool(torch.isfinite(part_scale)):
                bad += int((~torch.isfinite(part)).sum())
                continue
            # Entry (r, j) of a slice starting at row row0 is above the diagonal when j > row0 + r.
            part_upper = magnitude.triu_(1 + row0).amax()
            upper = part_upper if upper is None else torch.maximum(upper, part_upper)
            scale = part_scale if scale is None else torch.maximum(scale, part_scale)
        del buffer
        if bad:
            raise ValueError(f"T has {bad} NaN/Inf entries")
        if upper > causal_rtol * scale:
            raise ValueError(
                "T is not causal: max |T[i, j]| above the diagonal (j > i) is "
                f"{upper.item():.3g}, more than {causal_rtol:g} x max |T| = {scale.item():.3g}"
            )


def _head(x: torch.Tensor, n: int, min_dim: int) -> torch.Tensor:
    """``x[:n]`` along dim 0 when that dim is a batch dim of size > 1; else ``x`` (broadcast)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"batch head size must be a positive int, got {n!r}")
    return x[:n] if x.dim() >= min_dim and x.shape[0] > 1 else x


def _select(x: torch.Tensor, dim: int, index: torch.Tensor, batch_rank: int) -> torch.Tensor:
    """``index_select`` along batch dim ``dim`` of an operator factor ``(*batch, L, F)`` whose
    leading dims broadcast to ``batch_rank`` dims; a dim of size 1 or absent there stays shared."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < batch_rank:
        raise ValueError(f"dim must index one of the {batch_rank} batch dims, got {dim!r}")
    own = dim - (batch_rank - (x.dim() - 2))  # x may have fewer leading dims (broadcast)
    try:
        as_tensor = index if isinstance(index, torch.Tensor) else torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError):
        as_tensor = None
    if as_tensor is None or (as_tensor.numel() and (as_tensor.is_floating_point() or as_tensor.is_complex()
                                                    or as_tensor.dtype == torch.bool)):
        raise ValueError(f"index must be a 1-D list or integer tensor of batch entries, got {index!r}")
    if own < 0 or x.shape[own] == 1:
        return x
    index = torch.as_tensor(index, dtype=torch.long, device=x.device)
    if index.dim() != 1 or (index.numel() and not 0 <= int(index.min()) <= int(index.max()) < x.shape[own]):
        raise ValueError(f"index must be a 1-D list of entries in [0, {x.shape[own]}), got {index.tolist()}")
    return x.index_select(own, index)


def _check_values(v: torch.Tensor, length: int) -> None:
    check_floating("v", v)
    if v.dim() < 2 or v.shape[-2] != length:
        raise ValueError(f"v must have shape (..., L={length}, K), got {tuple(v.shape)}")



def shape_rank(idx: torch.Tensor, seq_len: int, io_width: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The most rank ``H_i`` can have by its shape alone, ``((L - i) D_out) x (i D_in)``:
    ``min(i D_in, (L - i) D_out)`` (``min(i, L - i)`` for one channel in and out)."""
    d_in, d_out = io_width
    return torch.minimum(idx * d_in, (seq_len - idx) * d_out)
