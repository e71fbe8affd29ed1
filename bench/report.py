"""Run the benchmarks and write docs/benchmarks.md from their results.

Each bench runs in its own subprocess with the same explicit ``--threads`` and writes its tables
as JSON (``--json``); this script turns them into one Markdown page: a header with the machine,
torch, the thread count and the date, then per bench the command that reproduces it, what it
measures, its tables (ratio columns in bold) and its notes.

The default set takes about 12 minutes on one thread of a 2-core CPU. Studies (training runs
whose question is accuracy, not speed) are presets in ``conf/experiment/`` reported by
``ess-report``; their results are in docs/results.md.

Usage: python bench/report.py [--quick] [--only NAME ...] [--threads 1] [--out docs/benchmarks.md]
       python bench/report.py --gpu --threads 4      # on a CUDA GPU: docs/benchmarks_gpu.md
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name: (arguments of the report's run, arguments of --quick, in the default set). Order = page order.
BENCHES = {
    "ess_speed": (["--lengths", "256", "512", "1024"], ["--lengths", "64", "128", "--repeats", "2"], True),
    "mixers": (["--lengths", "256", "1024", "--repeats", "3"],
               ["--lengths", "64", "--mixers", "sa", "gla", "s6", "hyena", "--repeats", "2"], True),
    "memory": (["--lengths", "512", "1024", "2048", "--budgets", "16", "64", "256"],
               ["--lengths", "256", "--budgets", "16", "--kinds", "dense", "ssm", "--channels", "2"], True),
    "train_speed": (["--steps", "20", "--probes", "3"], ["--steps", "2", "--probes", "1", "--setups", "default"], True),
    "penalty_overhead": (["--steps", "10"], ["--steps", "2", "--mixers", "gla"], True),
    "analyze_speed": (["--lengths", "128", "256", "--repeats", "3"], ["--lengths", "64", "--repeats", "2"], True),
    # the CPU preset at the 1B preset's L = 2048 (one timed call after a warm-up: minutes each)
    "analyze_llm": (["--preset", "cpu", "--length", "2048", "--indices", "64", "--repeats", "1"],
                    ["--preset", "cpu", "--indices", "8", "--repeats", "1", "--models", "mamba2"], True),
    "matrix_free": (["--lengths", "512", "2048", "--hyena-length", "1024", "--gru-length", "256", "--repeats", "2"],
                    ["--lengths", "128", "--hyena-length", "128", "--gru-length", "32", "--repeats", "1"], True),
    "tail_estimate": ([], ["--softmax-length", "256", "--hyena-length", "128", "--deflate", "16", "--repeats", "1"],
                      True),
}
# On a GPU (--gpu): the benches that run there, at GPU sizes, each with --device cuda.
GPU_BENCHES = {
    # Sized for gpu_check.sh's 340 s (measured on an H200, 2026-12-04): ess_speed's loop at L = 1024
    # alone took over 2 min there (that run is in docs/benchmarks_gpu.md), mixers about 25 s a mixer.
    # mixers first: not yet measured on a GPU.
    "mixers": ["--lengths", "1024", "--repeats", "3", "--worker-timeout", "60", "--device", "cuda"],
    "ess_speed": ["--lengths", "256", "512", "--repeats", "3", "--device", "cuda"],
}


def run_bench(name: str, args: list[str], threads: int, json_path: Path) -> tuple[int, float, list[str]]:
    """Run one bench, echoing its output; returns its exit code, wall time and last lines."""
    cmd = [sys.executable, str(HERE / f"{name}.py"), *args, "--threads", str(threads), "--json", str(json_path)]
    print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    tail = collections.deque(maxlen=20)
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
    seconds = time.perf_counter() - start
    print(f"=== {name}: exit code {proc.returncode}, {seconds / 60:.1f} min", flush=True)
    return proc.returncode, seconds, list(tail)


def cell(text: str, bold: bool = False) -> str:
    text = str(text).replace("|", "\\|")
    return f"**{text}**" if bold and text not in ("", "-") else text


def markdown_table(table: dict) -> list[str]:
    key = set(table["key"])
    columns = table["columns"]
    lines = ["| " + " | ".join(cell(c, c in key) for c in columns) + " |",
             "|" + "|".join([":--", *["--:"] * (len(columns) - 1)]) + "|"]
    for row in table["rows"]:
        lines.append("| " + " | ".join(cell(v, c in key) for c, v in zip(columns, row)) + " |")
    return lines


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def section(name: str, args: list[str], threads: int, seconds: float, code: int, tail: list[str],
            result: dict | None) -> list[str]:
    command = shlex.join(["python", f"bench/{name}.py", *args, "--threads", str(threads)])
    lines = [f"## {name}", ""]
    if result is not None:
        lines += [result["summary"], ""]
        if result.get("details"):
            lines += ["Sizes and timing: " + "; ".join(result["details"]) + ".", ""]
    lines += ["```bash", command, "```", "", f"Ran {duration(seconds)}."]
    if code or result is None:
        lines += ["", f"**Failed** (exit code {code}); the last lines of its output:", "", "```",
                  *tail[-10:], "```", ""]
        return lines
    for table in result["tables"]:
        lines.append("")
        if table["title"]:
            lines += [f"*{table['title']}*", ""]
        lines += markdown_table(table)
    if result["notes"]:
        lines.append("")
        lines += [f"- {note}" for note in result["notes"]]
    lines.append("")
    return lines


def header(machine: dict, threads: int, started: datetime.datetime, seconds: float, load: tuple | None,
           quick: bool, names: list[str], gpu: str | None = None) -> list[str]:
    command = "python bench/report.py" + (" --gpu" if gpu else "") + (" --quick" if quick else "") + (
        "" if names == default_names() or gpu else " --only " + " ".join(names)) + (
        "" if threads == 1 else f" --threads {threads}")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` ({duration(seconds)} in all); each section below gives the command that "
        "reproduces it.",
        "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['system']}",
        *([f"- **GPU:** {gpu}"] if gpu else []),
        f"- **Software:** Python {machine['python']}, torch {machine['torch']}",
        f"- **Threads:** {threads} torch thread{'s' if threads != 1 else ''} per bench (`--threads {threads}`)",
        f"- **Date:** {started.isoformat(timespec='seconds')}",
    ]
    if load is not None:
        lines.append(f"- **Load average at the start:** {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    lines += [
        "",
        "Every ratio compares two workloads measured in the same run of its bench on this machine, each "
        "timed on its own: the best of several calls after a warm-up (the sections say how many). Absolute "
        "times depend on the machine and on whatever else it was running; compare figures only within one "
        "page, and regenerate the page rather than quote it for another machine or date. Key columns are in "
        "bold.",
        "",
    ]
    if quick:
        lines[1:1] = ["", "**Quick sizes (`--quick`): a check that the benches and this script run. "
                          "These figures are not benchmarks.**"]
    return lines


def default_names() -> list[str]:
    return [name for name, (_, _, default) in BENCHES.items() if default]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (under a minute): checks that everything runs")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(BENCHES),
                        help=f"run these benches only, from: {', '.join(BENCHES)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every bench (default 1: on a shared machine, more threads than "
                             "free cores make the timings many times slower and noisier)")
    parser.add_argument("--gpu", action="store_true",
                        help=f"on a CUDA GPU: {', '.join(GPU_BENCHES)} at GPU sizes "
                             "(default page docs/benchmarks_gpu.md)")
    parser.add_argument("--out", default=None, help="the Markdown page to write (default docs/benchmarks.md)")
    args = parser.parse_args()
    names = [name for name in BENCHES if name in args.only] if args.only else default_names()
    gpu = None
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu: CUDA is not available on this machine")
        gpu = torch.cuda.get_device_name()
        names = list(GPU_BENCHES)
    args.out = args.out or str(ROOT / "docs" / ("benchmarks_gpu.md" if gpu else "benchmarks.md"))

    started = datetime.datetime.now().astimezone()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    sections, failed, machine = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            bench_args = GPU_BENCHES[name] if gpu else BENCHES[name][1 if args.quick else 0]
            json_path = Path(tmp) / f"{name}.json"
            code, seconds, tail = run_bench(name, bench_args, args.threads, json_path)
            result = json.loads(json_path.read_text()) if code == 0 and json_path.exists() else None
            if result is None:
                failed.append(name)
            elif machine is None:
                machine = result["machine"]
            sections += section(name, bench_args, args.threads, seconds, code, tail, result)
    if machine is None:  # every bench failed: describe the machine from here
        from ess_reg.environment import machine as described

        machine = described()
    page = header(machine, args.threads, started, time.perf_counter() - start, load, args.quick, names, gpu) + sections
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(page).rstrip() + "\n")
    print(f"\nwrote {out} ({duration(time.perf_counter() - start)})"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
