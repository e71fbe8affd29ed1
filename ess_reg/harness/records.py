"""Records files: a study's finished runs kept beyond the store they ran in.

One JSON object per line (a run's params, final metrics, tags and evaluation histories), small
enough to commit beside the study's report; a name ending in ``.gz`` is gzipped (about a tenth of
the size), with a fixed header time so the same records give the same bytes. It is how a study
run over several machines whose stores do not outlive them is analysed as one, and how a reader
re-analyses a published study without its store (``ess-report --records``, the scripts under
``docs/results/``).

Keep a machine's finished runs without looking at any result (a study analysed only once all its
runs are in):

    python -m ess_reg.harness.records --experiment my_study --into docs/results/my_study/runs.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .runsets import RunRecord, load_runs

__all__ = ["save_records", "read_records", "keep_records", "with_records"]


def _open(path, mode: str):
    if str(path).endswith(".gz"):  # mtime=0: a re-export of the same runs changes nothing in git
        return io.TextIOWrapper(gzip.GzipFile(path, mode + "b", mtime=0), encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def save_records(records: Sequence[RunRecord], path) -> None:
    """Write ``records`` to ``path`` (its folder made if missing), one JSON line per run, in run-id
    order (stable diffs)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _open(path, "w") as f:
        for r in sorted(records, key=lambda r: r.run_id):
            f.write(json.dumps({"run_id": r.run_id, "name": r.name, "params": r.params, "metrics": r.metrics,
                                "tags": {k: v for k, v in r.tags.items() if not k.startswith("mlflow.")},
                                "at_init": r.at_init, "experiment_id": r.experiment_id,
                                "history": {k: [list(p) for p in v] for k, v in r.history.items()}},
                               sort_keys=True) + "\n")


def read_records(path) -> list[RunRecord]:
    """The runs :func:`save_records` wrote; a line that is not such a run is an error naming it."""
    records = []
    with _open(path, "r") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                records.append(RunRecord(d["run_id"], d["name"], d["params"], d["metrics"], d["tags"],
                                         d.get("at_init", {}), {k: [(int(s), float(v)) for s, v in h]
                                                                for k, h in d["history"].items()},
                                         d.get("experiment_id")))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a run record ({err!r})") from err
    return records


def with_records(runs: Sequence[RunRecord], paths) -> list[RunRecord]:
    """``runs`` (a store's) and the runs of the records files at ``paths``; a run id already seen
    counts once (the first record of it is kept)."""
    merged, seen = list(runs), {r.run_id for r in runs}
    for path in paths:
        for r in read_records(path):
            if r.run_id not in seen:
                seen.add(r.run_id)
                merged.append(r)
    return merged


def keep_records(path, records: Sequence[RunRecord]) -> tuple[int, int]:
    """Add ``records`` to the file at ``path`` (made if missing); a run id already there keeps
    its record. Returns (added, now in the file)."""
    kept = read_records(path) if Path(path).exists() else []
    known = {r.run_id for r in kept}
    new = [r for r in records if r.run_id not in known]
    save_records(kept + new, path)
    return len(new), len(kept) + len(new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ess_reg.harness.records",
                                     description="Add an experiment's finished runs to a records file, or list "
                                                 "which runs a file holds (names and steps, no results).")
    parser.add_argument("--experiment")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--into", type=Path, help="the records file (.gz: gzipped)")
    parser.add_argument("--list", type=Path, metavar="FILE",
                        help="name each run in FILE and the step it reached, without any metric: what a study "
                             "registered to be analysed when complete still lacks")
    args = parser.parse_args(argv)
    if args.list is not None:
        if args.experiment or args.into:
            parser.error("--list reads a file: give it alone")
        records = read_records(args.list)
        for r in sorted(records, key=lambda r: r.name):
            print(f"{r.name}  (step {r.steps}, run {r.run_id})")
        print(f"{args.list}: {len(records)} run(s)")
        return 0
    if not (args.experiment and args.into):
        parser.error("give --experiment and --into (or --list FILE)")
    try:
        runs = load_runs(args.tracking_uri, experiment=args.experiment)
    except ValueError as err:
        print(f"records: error: {err}", file=sys.stderr)
        return 2
    added, total = keep_records(args.into, runs)
    print(f"{args.into}: {added} finished run(s) of {args.experiment!r} added, {total} in the file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
