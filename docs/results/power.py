"""The power of a paired study before it runs: at a normal effect, or at the effect and shape of a
pilot (a published study's per-seed table, a records file or a store), for several numbers of
pairs, with the pairs needed for the power asked for (ess_reg.harness.power).

    python docs/results/power.py --mean 0.15 --sd 0.31 --pairs 10,20,30,40
    python docs/results/power.py --table docs/results/collapse_penalty_gdn_confirm/arms.md \
        --compare ess_constraint:none --pairs 10,20,30,40 --alpha 0.05
    python docs/results/power.py --table ... --compare ess_constraint:none --mean 0.07   # half the effect

With a pilot the differences are resampled as they are (their mean moved to --mean when given):
a penalty that rescues a few seeds gives a few large differences and many near zero, whose power
a normal law of the same mean and sd misstates. A pilot's mean is an estimate, high as often as
not when the pilot was picked for looking promising: state the power at a smaller --mean too.
Prints a markdown table.
"""

import argparse
from pathlib import Path

import arms  # docs/results/arms.py: the pairing by seed and the tables it publishes

from ess_reg.harness.power import paired_power, pairs_needed
from ess_reg.harness.records import read_records
from ess_reg.harness.runsets import load_runs


def pilot_differences(runs, compare: str) -> list[float]:
    arm, _, base = compare.partition(":")
    table = arms.by_seed(runs)
    pairs = [(row[arm], row[base]) for row in table.values() if arm in row and base in row]
    if not pairs:
        names = sorted({a for row in table.values() for a in row})
        raise SystemExit(f"--compare {compare!r}: no seed has both arms; the arms are {names}")
    return [arms.final(a) - arms.final(b) for a, b in pairs]


def report(pairs: list[int], *, alpha: float, power: float, simulations: int, seed: int, **effect) -> str:
    lines = [f"| pairs | power, sign-flip (alpha {alpha:g}) | power, sign test |", "|---|---|---|"]
    for n in pairs:
        values = [paired_power(n, alpha=alpha, test=test, simulations=simulations, seed=seed, **effect)
                  for test in ("sign_flip", "sign")]
        lines.append(f"| {n} | {values[0]:.2f} | {values[1]:.2f} |")
    needed = [pairs_needed(power, alpha=alpha, test=test, simulations=simulations, seed=seed, **effect)
              for test in ("sign_flip", "sign")]
    lines += ["", f"Pairs for power {power:g}: sign-flip {needed[0] or 'more than 200'}, "
              f"sign test {needed[1] or 'more than 200'} ({simulations} simulated studies per cell: "
              f"a standard error of at most {0.5 / simulations ** 0.5:.3f})."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mean", type=float, default=None, help="the mean difference (with a pilot: moved to it)")
    parser.add_argument("--sd", type=float, default=None, help="the sd of the differences (a normal law)")
    parser.add_argument("--table", type=Path, default=None, help="a pilot: a published arms.md")
    parser.add_argument("--records", type=Path, default=None, help="a pilot: a records file")
    parser.add_argument("--experiment", default=None, help="a pilot: an experiment in --tracking-uri")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--compare", default=None, help="ARM:BASELINE of the pilot")
    parser.add_argument("--thresholds", default="0.25,0.5", help="those the --table was printed with")
    parser.add_argument("--pairs", default="8,12,16,24,32,48")
    parser.add_argument("--alpha", type=float, default=0.05, help="the level of the test (Holm's first step: alpha/m)")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--simulations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sources = [s for s in (args.table, args.records, args.experiment) if s is not None]
    if len(sources) > 1:
        parser.error("give one pilot: --table, --records or --experiment")
    if sources:
        if args.compare is None:
            parser.error("a pilot needs --compare ARM:BASELINE")
        if args.table is not None:
            runs = arms.runs_from_table(args.table, [float(t) for t in args.thresholds.split(",")])
        elif args.records is not None:
            runs = read_records(args.records)
        else:
            runs = load_runs(args.tracking_uri, experiment=args.experiment)
        differences = pilot_differences(runs, args.compare)
        mean = sum(differences) / len(differences)
        head = (f"Pilot: {args.compare} on {len(differences)} pairs, mean difference {mean:+.3f}"
                + (f", moved to {args.mean:+.3f}" if args.mean is not None else "") + "; resampled.")
        effect = dict(differences=differences, mean=args.mean)
    else:
        if args.mean is None or args.sd is None:
            parser.error("give --mean and --sd, or a pilot (--table, --records or --experiment)")
        head = f"Normal differences: mean {args.mean:+.3f}, sd {args.sd:.3f}."
        effect = dict(mean=args.mean, sd=args.sd)
    pairs = [int(n) for n in args.pairs.split(",")]
    text = head + "\n\n" + report(pairs, alpha=args.alpha, power=args.power, simulations=args.simulations,
                                  seed=args.seed, **effect)
    print(text)
    return text


if __name__ == "__main__":
    main()
