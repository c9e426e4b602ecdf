r"""Sensitivity of DFL2L to gamma (the DRO weight) and K (the DRO steps).

Reuses the finished zoos of offline runs (one workdir per seed) and, for each
(gamma, K) of the grid, fits DFL2L offline (Algorithm 1) on the same zoo and
meta-tests it on the run's own test tasks with the run's adaptation settings.
Every other fusion setting is the run's. VA is meta-tested once per seed as a
reference, so each cell is also reported as a paired difference to VA.

  python scripts/sensitivity.py --out results/sensitivity_sinusoid \
      workdirs/sinusoid/seed1 workdirs/sinusoid/seed2 ...

Writes <out>.json (every cell of every seed; rerunning skips the cells already
there), <out>.md (the table) and <out>.png (the plot, needs matplotlib). A cell
whose fusion diverges (NaN, see loops.DivergenceError) is recorded as diverged,
not dropped (the fusion's rate halving, fusion.rate_halvings, is off here).
"""

import argparse
import json
import math
import os
import sys

import jax
import numpy as np

from dfl2l_jax import bilevel
from dfl2l_jax import checkpointing
from dfl2l_jax import config_lib
from dfl2l_jax import loops
from dfl2l_jax import methods as methods_lib
from dfl2l_jax import metrics
from dfl2l_jax import pipeline
from dfl2l_jax import results as results_lib
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.methods import dfl2l

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {"sinusoid": "configs/sinusoid.py", "cifar_fs": "configs/cifarfs_5way.py",
           "mini_imagenet": "configs/miniimagenet_5way.py"}


def parse_floats(text):
  return tuple(float(v) for v in text.split(","))


def parse_ints(text):
  return tuple(int(v) for v in text.split(","))


def load_run_config(workdir):
  recorded = config_lib.recorded_config(workdir)
  if recorded is None:
    raise Dfl2lError(f"{workdir} has no results.json: finish its offline run first")
  config = config_lib.load_config_file(CONFIGS[recorded["benchmark"]], REPO)
  with config.unlocked():
    config_lib.update_from_dict(config, recorded)
  return config


def cell_key(seed, gamma, k, dro_lr=None):
  """A cell's name; the DRO step size is part of it only when --dro-lr sets one."""
  lr = "" if dro_lr is None else f" dro_lr={dro_lr:g}"
  return f"seed={seed} gamma={gamma:g} K={k}{lr}"


def run_seed(workdir, gammas, ks, dro_lr, done, save):
  """Fills `done` with every missing cell of one seed, saving after each."""
  config = load_run_config(workdir)
  benchmark = pipeline.prepare(config)
  with checkpointing.Checkpointer(os.path.join(workdir, "zoo")) as ckpt:
    if ckpt.latest_step() != config.zoo.steps:
      raise Dfl2lError(f"the zoo in {workdir} is unfinished")
  run = pipeline.RunContext.start(config, benchmark, workdir)
  zoo = zoo_lib.train_zoo(config, benchmark, workdir, mesh=run.models_mesh)  # restores it
  s_idx, q_idx = zoo_lib.split(config)
  episodes = {s: benchmark.make_episodes(s) for s in config.shots}

  def context():
    return methods_lib.MethodContext(
        config=config, benchmark=benchmark, zoo=zoo, s_idx=s_idx, q_idx=q_idx,
        key=run.key("dfl2l"), mesh=run.models_mesh)

  va_key = f"seed={config.seed} va"
  if va_key not in done:
    theta = methods_lib.METHODS["va"].make_init(context())
    done[va_key] = pipeline.meta_test_rows(run, "va", theta, episodes)
    save()
  for gamma in gammas:
    for k in ks:
      key = cell_key(config.seed, gamma, k, dro_lr)
      if key in done:
        continue
      fc = config.fusion.copy_and_resolve_references()
      with fc.unlocked():
        fc.gamma, fc.dro_steps = gamma, k
        fc.rate_halvings = 0  # the cell's rates as given: a divergence is the finding
        if dro_lr is not None:
          fc.dro_lr = dro_lr
      try:
        theta = bilevel.meta_init(dfl2l.offline_fusion(context(), fc))
        done[key] = pipeline.meta_test_rows(run, "dfl2l", theta, episodes)
      except loops.DivergenceError as e:
        metrics.log.warning("%s diverged: %s", key, e)
        done[key] = "diverged"
      save()
  return config


def summarise(done, seeds, gammas, ks, dro_lr, shots, metric):
  """Markdown table: per cell, mean over seeds and the paired difference to VA."""
  better = "lower" if metric == "mse" else "higher"
  lines = [f"| gamma | K | shots | {metric}: mean over seeds | 95% CI (seeds) | "
           f"paired {metric} - va: mean over tasks | 95% CI | seeds |",
           "|---|---|---|---|---|---|---|---|"]
  cells = {}
  for s in shots:
    for gamma in gammas:
      for k in ks:
        means, diffs, diverged = [], [], 0
        for seed in seeds:
          rows = done.get(cell_key(seed, gamma, k, dro_lr))
          if rows == "diverged":
            diverged += 1
            continue
          if rows is None:
            continue
          row = next(r for r in rows if r["shots"] == s)
          va = next(r for r in done[f"seed={seed} va"] if r["shots"] == s)
          means.append(row["mean"])
          diffs.extend(np.asarray(row["per_task"]) - np.asarray(va["per_task"]))
        if not means:
          lines.append(f"| {gamma:g} | {k} | {s} | diverged ({diverged} seeds) | | | | 0 |")
          continue
        m = np.asarray(means)
        ci = results_lib.mean_ci95(m, student_t=True)[1]
        d = np.asarray(diffs)
        dci = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
        note = f" ({diverged} diverged)" if diverged else ""
        lines.append(f"| {gamma:g} | {k} | {s} | {m.mean():.3f} | {ci:.3f} | {d.mean():+.3f} | "
                     f"{dci:.3f} | {m.size}{note} |")
        cells[(s, gamma, k)] = (m.mean(), ci, d.mean(), dci)
  va_lines = []
  for s in shots:
    v = np.asarray([next(r for r in done[f"seed={seed} va"] if r["shots"] == s)["mean"]
                    for seed in seeds])
    va_lines.append(f"va at {s} shots: {v.mean():.3f} (mean over {v.size} seeds).")
  text = "\n".join(lines) + "\n\n" + " ".join(va_lines) + (
      "\nA negative paired difference means DFL2L is better than VA." if better == "lower" else
      "\nA positive paired difference means DFL2L is better than VA.") + "\n"
  return text, cells


def plot(cells, gammas, ks, shots, metric, path):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("matplotlib is not installed (pip install -e .[plots]): no plot", file=sys.stderr)
    return
  fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 3.6), squeeze=False)
  for ax, s in zip(axes[0], shots):
    for k in ks:
      pts = [(g, cells[(s, g, k)]) for g in gammas if (s, g, k) in cells]
      if not pts:
        continue
      g = [p[0] for p in pts]
      ax.errorbar(g, [p[1][2] for p in pts], yerr=[p[1][3] for p in pts], marker="o",
                  capsize=3, label=f"K = {k}")
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("gamma")
    ax.set_ylabel(f"paired {metric}: dfl2l - va")
    ax.set_title(f"{s} shots")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("workdirs", nargs="+", help="finished offline runs, one per seed")
  p.add_argument("--gammas", type=parse_floats, default=(0.1, 1.0, 10.0))
  p.add_argument("--ks", type=parse_ints, default=(1, 3, 10), help="DRO steps K")
  p.add_argument("--dro-lr", type=float, default=None,
                 help="DRO step size for every cell (default: the run's fusion.dro_lr); "
                 "gradient descent on Eq. 8 is stable only for dro_lr < 1 / gamma")
  p.add_argument("--out", required=True, help="output prefix (.json, .md, .png)")
  args = p.parse_args(argv)
  metrics.install_stderr_handler()
  done = {}
  if os.path.exists(args.out + ".json"):
    with open(args.out + ".json") as f:
      done = json.load(f)["cells"]

  def save():
    checkpointing.write_json_atomic(args.out + ".json", {"cells": done})

  seeds, config = [], None
  try:
    for w in args.workdirs:
      config = run_seed(w, args.gammas, args.ks, args.dro_lr, done, save)
      seeds.append(config.seed)
  except Dfl2lError as e:
    raise SystemExit(f"error: {e}")
  metric = "mse" if config.benchmark == "sinusoid" else "accuracy"
  text, cells = summarise(done, seeds, args.gammas, args.ks, args.dro_lr, tuple(config.shots),
                          metric)
  lr = config.fusion.dro_lr if args.dro_lr is None else args.dro_lr
  header = (f"# DFL2L sensitivity to gamma and K ({config.benchmark}, dro_lr {lr:g})\n\n"
            f"Workdirs: {', '.join(args.workdirs)}; device: {jax.devices()[0].device_kind}.\n\n")
  with open(args.out + ".md", "w") as f:
    f.write(header + text)
  print(header + text)
  plot(cells, args.gammas, args.ks, tuple(config.shots), metric, args.out + ".png")


if __name__ == "__main__":
  main()
