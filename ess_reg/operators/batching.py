"""What the spectra paths of every operator kind share: the memory budget a call's working
tensors must fit, how many batch elements fit it at once, the thread pool small SVDs are spread
over on CPU, and the C heap kept from growing with freed blocks."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from .._checks import check_number

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes a call may allocate for its working tensors
# Working memory of a batched SVD, in units of its input's size in the compute dtype; measured on
# CPU as peak RSS growth (torch 2.13, MKL gesdd, float32 and float64, batches of 1-64 blocks from
# 64 x 64 to 2048 x 1024, 1-32 MiB): singular values only, 0.99-1.19x (the column-major copy
# LAPACK overwrites, plus its workspace; up to 1.35x for 2 MiB of 64 x 64 blocks, where fixed
# buffers count); with singular vectors, which svdvals computes when a gradient may be needed,
# 2.5-4.8x (the copy, U, V^T and a larger workspace; tall 2:1 blocks are the worst).
# CUDA (cuSOLVER) uses the same model, unmeasured.
_SVD_OVERHEAD = 1.25
_SVD_UV_OVERHEAD = 5
# Chunks whose working set is at least this big are followed by a check of the C heap (see
# _HeapTrimmer); the freed memory a call holds is kept under a quarter of its budget.
_TRIM_MIN_BYTES = 2**20
_TRIM_FRACTION = 0.25


# On CUDA, torch's default SVD for blocks over 32 x 32 is cuSOLVER's Jacobi driver (gesvdj). On an
# H200 (2026-12-04, docs/benchmarks_gpu.md) it was off by up to 0.06-0.12 in entropy-ESS on float64
# blocks of rank <= 16 up to 512 x 512, while the batched Jacobi that blocks up to 32 x 32 get was
# exact to 1e-14. Large blocks take the QR driver, as LAPACK does on the CPU.
CUDA_LARGE_SVD_DRIVER = "gesvd"
_CUDA_BATCHED_JACOBI_MAX = 32


def block_svdvals(blocks: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.svdvals`` of ``(..., m, n)`` blocks; on CUDA, blocks over 32 x 32 use the
    QR driver (``CUDA_LARGE_SVD_DRIVER``). Unchanged on the CPU."""
    if blocks.is_cuda and max(blocks.shape[-2:]) > _CUDA_BATCHED_JACOBI_MAX:
        return torch.linalg.svdvals(blocks, driver=CUDA_LARGE_SVD_DRIVER)
    return torch.linalg.svdvals(blocks)


def _check_memory_budget(memory_budget) -> int:
    """A positive, finite number of bytes (NaN, inf, a bool or a non-number would switch it off)."""
    check_number("memory_budget", memory_budget, minimum=1)
    return int(memory_budget)


def _pad_to(sigma: torch.Tensor, width: int) -> torch.Tensor:
    if sigma.shape[-1] >= width:
        return sigma[..., :width]
    return torch.nn.functional.pad(sigma, (0, width - sigma.shape[-1]))



def _batch_chunks(batch: int, bytes_per_item: int, budget: int, what: str) -> int:
    """How many batch elements fit the budget at once (at least one, else a clear error)."""
    if bytes_per_item > budget:
        raise ValueError(
            f"{what} needs {bytes_per_item / 2**20:.1f} MiB for a single batch element, more than "
            f"memory_budget={budget / 2**20:.1f} MiB; raise memory_budget or ask for fewer indices"
        )
    return max(1, min(batch, budget // bytes_per_item))


@functools.lru_cache(maxsize=4)
def _svd_pool(workers: int) -> ThreadPoolExecutor:
    # One intra-op thread per worker: nested OpenMP teams on few cores spin against each
    # other (measured: 30x slower than serial on 2 cores without this).
    return ThreadPoolExecutor(workers, thread_name_prefix="ess-svd", initializer=torch.set_num_threads, initargs=(1,))


def _workers(device: torch.device, tasks: int) -> int:
    """Threads for batched small SVD/QR work: LAPACK on CPU runs a batch one matrix at a time
    on one core, so the batch is split over ``torch.get_num_threads()`` workers; CUDA batches."""
    return max(1, min(torch.get_num_threads(), tasks)) if device.type == "cpu" else 1


def _map(fn, items: list, workers: int) -> list:
    """``[fn(item) for item in items]``, over the thread pool when ``workers > 1``."""
    return list(_imap(fn, items, workers))


def _imap(fn, items: list, workers: int) -> Iterator:
    """``fn(item)`` for each item, in order, as they come (over the thread pool when
    ``workers > 1``): the caller can store each result and drop it before the next."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    grad_enabled, threads = torch.is_grad_enabled(), torch.get_num_threads()

    def call(item):
        with torch.set_grad_enabled(grad_enabled):  # grad mode is thread-local
            return fn(item)

    try:
        yield from _svd_pool(workers).map(call, items)
    finally:
        if torch.get_num_threads() != threads:  # a build whose thread setting is global, not per thread
            torch.set_num_threads(threads)



class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library's allocator controls when it is glibc >= 2.33 (``mallinfo2``,
    ``malloc_trim``), else None (macOS, musl, Windows: no trimming)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process: libc's, on Linux
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return libc


class _HeapTrimmer:
    """Keeps the freed memory the C heap holds on to during a call under a quarter of its budget.

    glibc serves an allocation below its mmap threshold (which rises, up to 32 MiB, as large
    blocks are freed) from its heaps and keeps freed heap memory resident for reuse.  Temporaries
    that change size from one batch chunk to the next (the blocks of successive indices) leave
    holes the next, larger, chunk cannot use, and the process grew by up to about twice the live
    working set (measured at L=2048, float32 and bfloat16 T: 1.6-1.9x a 36 MiB budget whose
    chunks were sized right).  ``check()``, after a chunk, gives the free memory back to the
    system (``malloc_trim``) when that chunk was big for the budget (at least ``limit / 2``)
    or when the free bytes held have grown by more than ``limit`` since the last trim: the
    held extra then stays about ``limit`` at most.  Chunks under ``_TRIM_MIN_BYTES`` are never
    checked (a check walks the allocator's free lists; a trim makes the next chunk fault its
    pages in again: measured 1-3% of the SVD time of 16-36 MiB chunks, the worst case).
    A no-op off glibc and off the CPU.
    """

    def __init__(self, budget: int, device: torch.device):
        self.libc = _glibc() if device.type == "cpu" else None
        self.limit = budget * _TRIM_FRACTION
        self.mark = self._held() if self.libc is not None else 0

    def _held(self) -> int:
        return int(self.libc.mallinfo2().fordblks)

    def check(self, chunk_bytes: float) -> None:
        if self.libc is None or chunk_bytes < _TRIM_MIN_BYTES:
            return
        if chunk_bytes >= self.limit / 2 or self._held() - self.mark > self.limit:
            self.libc.malloc_trim(0)
            self.mark = self._held()

