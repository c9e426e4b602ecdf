r"""Paired differences between two sets of runs of the same seeds: what a change of the zoo
or of a method's settings did, method by method, over seeds.

  python scripts/paired_runs.py --before runs/clean_s{1,2,3} --after runs/fake30_s{1,2,3} \
      [--label "fake 30%"] [--methods va,zoo_features] [--first-tasks 100] [--out FILE]

Each run is a workdir or a results JSON file; runs are matched by their seed (each seed
once on each side). A seed's test tasks depend on the seed alone, so the rows of one seed
are paired task by task: for each method and shot count present on both sides, each
seed's mean of (after - before) over its tasks; the table gives the mean over seeds with a
95% interval (Student t over seeds; none for one seed), each side's mean over seeds, and
each seed's difference. `--first-tasks N` uses each row's first N tasks (to pair a 600-task
run with 100-task ones). Aggregates of several seeds made under one setting are
scripts/aggregate_seeds.py's job; this script is for "the same seeds, one thing changed".
"""

import argparse
import math
import os
import sys

import numpy as np

import aggregate_seeds  # scripts/ is on the path of a script run from it

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228}


def load(path):
  """{seed: {(method, shots): per-task array}} of one run (workdir or results JSON)."""
  file = os.path.join(path, "results.json") if os.path.isdir(path) else path
  results = aggregate_seeds.read(file)
  rows = {}
  for r in results.get("rows", []):
    if r.get("na") or r.get("failed") or not r.get("per_task"):
      continue
    rows[(r["method"], int(r["shots"]))] = np.asarray(r["per_task"], np.float64)
  if not rows:
    raise SystemExit(f"error: {file}: no finished rows with per-task values")
  return int(results["seed"]), rows


def by_seed(paths, side):
  out = {}
  for p in paths:
    seed, rows = load(p)
    if seed in out:
      raise SystemExit(f"error: --{side} has seed {seed} twice ({p})")
    out[seed] = rows
  return out


def interval(values):
  """(mean, 95% half-width over the values by Student t; None for one value)."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), None
  t = T95.get(len(v) - 1, 1.96)
  return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


def table(before, after, methods=None, first_tasks=None, label="after"):
  seeds = sorted(set(before) & set(after))
  if not seeds:
    raise SystemExit(f"error: no seed on both sides (before: {sorted(before)}, after: "
                     f"{sorted(after)})")
  keys = sorted(set.intersection(*[set(before[s]) & set(after[s]) for s in seeds]))
  if methods:
    keys = [k for k in keys if k[0] in methods]
  if not keys:
    raise SystemExit("error: no method and shot count present on both sides in every seed")
  lines = [f"| method | shots | before | {label} | {label} - before (95% CI over seeds) | "
           "per seed |", "|---|---|---|---|---|---|"]
  for key in keys:
    diffs, a_means, b_means = [], [], []
    for s in seeds:
      a, b = before[s][key], after[s][key]
      n = min(len(a), len(b)) if first_tasks is None else first_tasks
      if len(a) < n or len(b) < n:
        raise SystemExit(f"error: seed {s} {key[0]} at {key[1]} shots has {len(a)} / "
                         f"{len(b)} tasks, fewer than --first-tasks {n}")
      if first_tasks is None and len(a) != len(b):
        raise SystemExit(f"error: seed {s} {key[0]} at {key[1]} shots has {len(a)} tasks "
                         f"before and {len(b)} after; pass --first-tasks")
      a, b = a[:n], b[:n]
      diffs.append(float((b - a).mean()))
      a_means.append(float(a.mean()))
      b_means.append(float(b.mean()))
    mean, half = interval(diffs)
    ci = f"{mean:+.1f}" + (f" ± {half:.1f}" if half is not None else " (one seed)")
    per_seed = ", ".join(f"{s}: {d:+.1f}" for s, d in zip(seeds, diffs))
    lines.append(f"| {key[0]} | {key[1]} | {np.mean(a_means):.1f} | {np.mean(b_means):.1f} | "
                 f"{ci} | {per_seed} |")
  return "\n".join(lines) + f"\n\nSeeds {', '.join(map(str, seeds))}.\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--before", nargs="+", required=True)
  p.add_argument("--after", nargs="+", required=True)
  p.add_argument("--label", default="after")
  p.add_argument("--methods", default="")
  p.add_argument("--first-tasks", type=int, default=None)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  methods = [m for m in a.methods.split(",") if m] or None
  text = table(by_seed(a.before, "before"), by_seed(a.after, "after"), methods,
               a.first_tasks, a.label)
  sys.stdout.write(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
