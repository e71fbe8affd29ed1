"""What the benchmarks share: one timing helper, the machine they ran on, and their result tables.

* :func:`best_of` times a function on its own: ``warmup`` untimed calls, then ``repeats`` timed
  ones, nothing else interleaved; a :class:`Timing` keeps the best (the figure the benches
  quote), the median and the last call's return value.
* :func:`add_common_args` / :func:`setup` give every bench ``--threads`` (torch threads, set
  explicitly) and ``--json PATH``; :func:`machine` describes the machine, torch, threads and date.
* :class:`Results` collects a bench's tables (printed as text while they fill) and notes, and
  writes them with the machine as JSON, which ``bench/report.py`` turns into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Timing:
    """Wall times (seconds) of the timed calls of :func:`best_of`."""

    best: float
    median: float
    times: tuple[float, ...]
    result: Any = None  # what the last call returned


def synchronize(device: str = "cpu") -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing on a CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def best_of(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed, one call after another
    (on a GPU, each timing ends when the device has finished: ``device="cuda"``).

    Time one workload per call: to compare two, time each with its own ``best_of`` (calls of two
    workloads interleaved step by step distort the cheaper one).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"best_of needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(min(times), statistics.median(times), tuple(times), result)


def default_threads() -> int:
    """As ``trainer.threads=auto``: half the cores, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def machine() -> dict:
    """The machine, torch and its thread count now (:func:`ess_reg.environment.machine`), and the date."""
    from ess_reg.environment import machine as described

    return {**described(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def machine_line(info: dict | None = None) -> str:
    info = info or machine()
    return (f"{info['cpu']}, {info['cores']} cores, {info['system']}, Python {info['python']}, "
            f"torch {info['torch']} ({info['threads']} thread{'s' if info['threads'] != 1 else ''}), {info['date']}")


def add_common_args(parser: argparse.ArgumentParser, threads: int | None = None) -> None:
    """``--threads`` (default: ``threads``, else as ``trainer.threads=auto``) and ``--json PATH``."""
    default = threads if threads is not None else default_threads()
    parser.add_argument("--threads", type=int, default=default,
                        help=f"torch threads, set explicitly (default {default})")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (read by bench/report.py)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the workloads run (default cpu)")


def setup(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads``."""
    import torch

    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)


class Table:
    """A result table, printed row by row as it fills. ``key`` names the columns that carry the
    bench's result (its ratios); ``widths`` the printed width of each column."""

    def __init__(self, columns: Sequence[str], title: str | None = None, key: Sequence[str] = (),
                 widths: Sequence[int] | None = None):
        unknown = set(key) - set(columns)
        if unknown:
            raise ValueError(f"key columns {sorted(unknown)} are not among {list(columns)}")
        self.columns, self.title, self.key = list(columns), title, list(key)
        self.widths = list(widths) if widths else [len(c) for c in columns]
        self.rows: list[list[str]] = []
        self.data: list[dict] = []

    def _line(self, cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{self.widths[0]}}"
        return " ".join([first, *(f"{c:>{w}}" for c, w in zip(cells[1:], self.widths[1:]))])

    def add(self, *cells: str, **data: Any) -> None:
        """One row: its cells as printed; ``data``: the raw numbers behind them (kept in the JSON)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells for {len(self.columns)} columns")
        if not self.rows:
            if self.title:
                print(f"\n{self.title}")
            print(self._line(self.columns))
        self.rows.append([str(c) for c in cells])
        self.data.append(data)
        print(self._line(self.rows[-1]), flush=True)

    def to_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "key": self.key, "rows": self.rows, "data": self.data}


class Results:
    """A bench's tables and notes, and the JSON that carries them with the machine."""

    def __init__(self, bench: str, summary: str, params: dict | None = None):
        self.bench, self.summary, self.params = bench, summary, dict(params or {})
        self.details: list[str] = []
        self.tables: list[Table] = []
        self.notes: list[str] = []

    def describe(self, text: str) -> None:
        """A line on the sizes and timing of this run, printed above the tables and kept in the JSON."""
        print(text, flush=True)
        self.details.append(text)

    def table(self, columns: Sequence[str], title: str | None = None, key: Sequence[str] = (),
              widths: Sequence[int] | None = None) -> Table:
        self.tables.append(Table(columns, title, key, widths))
        return self.tables[-1]

    def note(self, text: str) -> None:
        """A line printed under the tables and kept in the JSON."""
        print(text, flush=True)
        self.notes.append(text)

    def to_dict(self) -> dict:
        return {"bench": self.bench, "summary": self.summary, "params": self.params, "machine": machine(),
                "argv": sys.argv[1:], "details": self.details, "tables": [t.to_dict() for t in self.tables],
                "notes": self.notes}

    def write(self, path: str | None) -> None:
        """Write the JSON to ``path`` (nothing when ``path`` is None)."""
        if path:
            with open(path, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
