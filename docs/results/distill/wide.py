"""The wide distillation study's test (conf/experiment/distill_wide_teachers.yaml, distill_wide.yaml):
are teachers of higher ESS harder to distill, when the mixer and its state size set the teacher's
ESS? As decided before running:

  - outcome: the student's held-out distillation loss, valid/distill_kl, at the end;
  - measure: the teacher's ESS/kv as the student's run logged it (teacher/ess/per_kv, on the
    student's probe batch);
  - only teachers that solve the task count (teacher accuracy >= 0.9);
  - for each student size, Spearman's rho over those teachers with its two-sided permutation p
    (every ordering up to 8 points, else 20000 random ones) and a BCa interval; Holm over the two
    sizes. The paper predicts a positive rho.

Run from the folder the study ran in (or give its store):

    python docs/results/distill/wide.py [--tracking-uri sqlite:///runs/mlflow.db] [--out DIR]

It prints the table and writes wide.md into --out (default: beside itself).
"""

import argparse
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import correlation_test, holm

COMPETENT = 0.9  # teacher accuracy at or above which a teacher counts, decided before running


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="distill-wide")
    parser.add_argument("--teachers", default="distill-wide-teachers", help="the teachers' experiment")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args()
    students = load_runs(args.tracking_uri, experiment=args.experiment)
    teachers = {r.run_id: r for r in load_runs(args.tracking_uri, experiment=args.teachers)}

    def teacher_of(student):
        folder = student.params.get("distill.teacher", "").rstrip("/")
        return teachers.get(Path(folder).name)

    rows, by_size = [], {}
    for s in students:
        t = teacher_of(s)
        stated = None if t is None else t.params.get("model.state_size")
        size = "" if stated in (None, "None") else f" {stated}"  # attention has no state size
        name = "?" if t is None else f"{t.mixer}{size} seed {t.params.get('seed')}"
        acc = s.metrics.get("teacher/valid/accuracy")
        ess = s.metrics.get("teacher/ess/per_kv")
        kl = s.metrics.get("valid/distill_kl")
        student = int(s.params["model.state_size"])
        rows.append((student, ess if ess is not None else float("nan"), name, acc, kl, s.metrics.get("valid/accuracy")))
        if acc is not None and acc >= COMPETENT and ess is not None and kl is not None:
            by_size.setdefault(student, []).append((ess, kl))
    lines = ["| student state | teacher | teacher accuracy | teacher ESS/kv | student distill KL | student accuracy |",
             "|---|---|---|---|---|---|"]
    for size, ess, name, acc, kl, sacc in sorted(rows):
        lines.append(f"| {size} | {name} | {acc:.3f} | {ess:.3f} | {kl:.3f} | {sacc:.3f} |")
    tests = {size: correlation_test([e for e, _ in pts], [k for _, k in pts], resamples=2000)
             for size, pts in sorted(by_size.items())}
    adjusted = dict(zip(tests, holm([t.p for t in tests.values()])))
    lines += ["", f"Teachers that count (accuracy >= {COMPETENT}); Spearman(student distill KL, teacher ESS/kv):", "",
              "| student state | n teachers | rho | 95% BCa | permutation p | Holm p |", "|---|---|---|---|---|---|"]
    for size, t in tests.items():
        if t.refused:
            lines.append(f"| {size} | {t.n} | - | - | - | refused: {t.refused} |")
        else:
            lines.append(f"| {size} | {t.n} | {t.spearman:+.2f} | [{t.interval[0]:+.2f}, {t.interval[1]:+.2f}] | "
                         f"{t.p:.3f} | {adjusted[size]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wide.md").write_text("# Wide distillation study: the table and the test\n\n" + text)


if __name__ == "__main__":
    main()
