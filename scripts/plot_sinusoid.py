r"""Figure 4 of the paper for a finished sinusoid run: fits after adaptation.

For a few test tasks and each shot count K, plots the true function on
[-5, 5], the K support points, and for every method whose initialisation is
saved in `<workdir>/inits/` the function it fits after meta-test adaptation
(Algorithm 3: S steps of SGD with rate alpha on the support set, from
config.metatest). Each legend entry gives the method's MSE on that task's
query points, the number results.json averages over tasks.

  python -m launch.offline --config=configs/sinusoid.py --workdir=/tmp/sinusoid \
      --config.methods=dfl2l,dfl2l_online,va,finetune
  python scripts/plot_sinusoid.py --workdir=/tmp/sinusoid --config=configs/sinusoid.py

The run's config and seed are read from <workdir>/results.json; --config
(e.g. configs/sinusoid.py:smoke) and --seed replace them. Needs matplotlib:
pip install -e .[plots]
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import algorithms
from dfl2l_jax import checkpointing
from dfl2l_jax import config_lib
from dfl2l_jax import tasks
from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.tasks import sinusoid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHOD_ORDER = ("dfl2l", "dfl2l_online", "va", "finetune")
METHOD_STYLE = {
    "dfl2l": {"color": "tab:red", "label": "DFL2L (ours)"},
    "dfl2l_online": {"color": "tab:orange", "label": "DFL2L online"},
    "va": {"color": "tab:blue", "label": "VA"},
    "finetune": {"color": "tab:green", "label": "Finetuning"},
}
GRID_POINTS = 400


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a finished sinusoid run directory")
  p.add_argument("--config", default=None,
                 help="the run's config file, optionally with ':variant' (default: the "
                 "config recorded in <workdir>/results.json, else configs/sinusoid.py)")
  p.add_argument("--seed", type=int, default=None,
                 help="the run's seed (default: from <workdir>/results.json, else the config's)")
  p.add_argument("--tasks", default="0,1,2,3",
                 help="comma-separated test task indices, one column each")
  p.add_argument("--shots", default="5,10", help="comma-separated K, one row each")
  p.add_argument("--methods", default="",
                 help="comma-separated methods (default: every one in <workdir>/inits)")
  p.add_argument("--steps", type=int, default=None, help="S (default config.metatest.steps)")
  p.add_argument("--lr", type=float, default=None, help="alpha (default config.metatest.lr)")
  p.add_argument("--out", default="results/sinusoid_fig4.png")
  p.add_argument("--dpi", type=int, default=150)
  return p.parse_args(argv)


def int_list(text, what):
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise SystemExit(f"error: --{what} must be comma-separated integers, got {text!r}")
  if not values:
    raise SystemExit(f"error: --{what} is empty")
  return values


def import_pyplot():
  """matplotlib.pyplot on the Agg backend, or exit saying how to install it."""
  try:
    import matplotlib
  except ImportError:
    raise SystemExit("error: this script needs matplotlib, an optional extra of dfl2l_jax. "
                     "Install it with:  pip install -e .[plots]")
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def load_config(spec, workdir, seed):
  """The run's config.

  With `spec` (`path[:variant]`) that file's config, with a warning if it
  differs from the one recorded in <workdir>/results.json; without it, the
  recorded config (read over configs/sinusoid.py's defaults), or the defaults
  when the run has no results.json. `seed`, if given, overrides the seed.
  """
  results = os.path.join(workdir, "results.json")
  recorded = config_lib.recorded_config(workdir)
  config = config_lib.load_config_file(spec or "configs/sinusoid.py", REPO)
  if spec is None and recorded is not None:
    config_lib.update_from_dict(config, recorded)
  elif recorded is not None:
    diffs = config_lib.dict_diff(recorded, json.loads(json.dumps(config.to_dict())))
    diffs = [d for d in diffs if not d.startswith(("methods:", "seed:"))]
    if diffs:
      print(f"warning: {spec} differs from the config recorded in {results}: "
            f"{'; '.join(diffs[:6])}", file=sys.stderr)
    if seed is None:
      seed = recorded["seed"]
  if seed is not None:
    config.seed = seed
  if config.benchmark != "sinusoid":
    raise SystemExit(f"error: the config is for {config.benchmark!r}; this plots sinusoid runs")
  return config


def available_methods(workdir, wanted):
  """Methods to plot, in the paper's order, each with a saved initialisation."""
  inits = os.path.join(workdir, "inits")
  saved = sorted(os.listdir(inits)) if os.path.isdir(inits) else []
  if not saved:
    raise SystemExit(f"error: {inits} holds no saved initialisations; is {workdir} a "
                     "finished run (python -m launch.offline ...)?")
  if wanted:
    missing = [m for m in wanted if m not in saved]
    if missing:
      raise SystemExit(f"error: no initialisation for {', '.join(missing)} in {inits} "
                       f"(saved: {', '.join(saved)})")
    return wanted
  return [m for m in METHOD_ORDER if m in saved] + [m for m in saved if m not in METHOD_ORDER]


def adapt_all(theta_init, episodes, benchmark, steps, lr, batch_size, step_bound=0.0):
  """Algorithm 3 on every task's support set, batched exactly as the meta-test.

  Tasks go through `lax.map` with the meta-test's `batch_size`, as in
  `adaptation.meta_test`: over hundreds of SGD steps the rounding of a
  differently batched program grows into visibly different fits, so only the
  same batching reproduces the per-task numbers of results.json.

  Returns:
    The adapted parameters, with a leading task axis.
  """

  def one_task(ep):
    return algorithms.adapt(theta_init, {"x": ep["support_x"], "y": ep["support_y"]},
                            benchmark.loss_fn, steps, lr, step_bound)

  eps = {k: jnp.asarray(episodes[k]) for k in ("support_x", "support_y")}
  size = int(min(batch_size, eps["support_x"].shape[0]))
  return jax.jit(lambda e: jax.lax.map(one_task, e, batch_size=size))(eps)


def curves_and_mse(adapted, episodes, x_grid, benchmark):
  """Each adapted network on `x_grid`, and its metric on its query set.

  Returns:
    (curves, query_mse): shapes (tasks, grid) and (tasks,), numpy.
  """

  def one_task(params, qx, qy):
    curve = benchmark.apply(params, x_grid)[:, 0]
    return curve, benchmark.metric_fn(params, {"x": qx, "y": qy}, None)

  curves, mse = jax.jit(jax.vmap(one_task))(adapted, jnp.asarray(episodes["query_x"]),
                                            jnp.asarray(episodes["query_y"]))
  return np.asarray(curves), np.asarray(mse)


def select_tasks(episodes, indices):
  return {k: np.asarray(v)[np.asarray(indices)] for k, v in episodes.items()}


def true_curve(episodes, i, x_grid):
  task = {k: episodes[k][i] for k in ("a", "beta", "b")}
  return np.asarray(sinusoid.sinusoid(task, x_grid))[:, 0]


def mse_line(ax, colored_values):
  """One row "MSE  v1  v2 ..." at the top of `ax`, each value in its method's color."""
  ax.text(0.02, 0.96, "MSE", transform=ax.transAxes, fontsize=8.5, va="top",
          fontweight="bold")
  step = 0.86 / max(len(colored_values), 1)
  for i, (color, value) in enumerate(colored_values):
    ax.text(0.13 + i * step, 0.96, f"{value:.2f}", transform=ax.transAxes, fontsize=8.5,
            va="top", color=color, fontweight="bold")


def draw(plt, panels, methods, x_grid, task_ids, shots_list, steps, lr, seed):
  """The grid of subplots: one row per K, one column per task."""
  n_rows, n_cols = len(shots_list), len(task_ids)
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.4 * n_rows + 0.9),
                           squeeze=False, sharex=True)
  x = np.asarray(x_grid)[:, 0]
  for r, shots in enumerate(shots_list):
    eps, fits = panels[shots]
    for c, task in enumerate(task_ids):
      ax = axes[r, c]
      truth = true_curve(eps, c, x_grid)
      ax.plot(x, truth, color="black", lw=2.2, ls="--", label="true function", zorder=3)
      for name in methods:
        curves, _ = fits[name]
        style = METHOD_STYLE.get(name, {"label": name})
        ax.plot(x, curves[c], lw=1.6, color=style.get("color"), label=style["label"],
                zorder=2)
      ax.scatter(eps["support_x"][c, :, 0], eps["support_y"][c, :, 0], s=36, color="black",
                 marker="o", edgecolor="white", zorder=4, label=f"{shots} support points")
      # The range covers the truth and the fits, but at most one truth-range beyond it.
      span = max(truth.max() - truth.min(), 1.0)
      fitted = np.stack([fits[n][0][c] for n in methods])
      lo = max(min(truth.min(), fitted.min()), truth.min() - span)
      hi = min(max(truth.max(), fitted.max()), truth.max() + span)
      pad = max(0.6, 0.12 * (hi - lo))
      ax.set_ylim(lo - pad, hi + 3 * pad)  # Headroom for the MSE line.
      ax.set_xlim(*sinusoid.DOMAIN)
      ax.grid(alpha=0.3)
      ax.set_title(f"task {task}, {shots}-shot: "
                   f"a={eps['a'][c]:.2f}, \u03b2={eps['beta'][c]:.2f}, b={eps['b'][c]:.2f}",
                   fontsize=10)
      mse_line(ax, [(METHOD_STYLE.get(n, {}).get("color", "gray"), fits[n][1][c])
                    for n in methods])
      if r == n_rows - 1:
        ax.set_xlabel("x")
      if c == 0:
        ax.set_ylabel("y")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  keep = [(h, "support points" if l.endswith("support points") else l)
          for h, l in zip(handles, labels)]
  fig.legend(*zip(*keep), loc="lower center", ncol=len(keep), frameon=False, fontsize=10)
  fig.suptitle(f"Sinusoid meta-test fits after adaptation (S={steps} SGD steps, "
               f"\u03b1={lr:g}, seed {seed}); top of each panel: query MSE per method",
               fontsize=12)
  fig.tight_layout(rect=(0, 0.45 / (3.4 * n_rows + 0.9), 1, 1))
  return fig


def main(argv=None):
  args = parse_args(argv)
  plt = import_pyplot()
  task_ids = int_list(args.tasks, "tasks")
  shots_list = int_list(args.shots, "shots")
  config = load_config(args.config, args.workdir, args.seed)
  try:
    config_lib.validate(config)
    benchmark = tasks.get_benchmark(config)
    bad = [s for s in shots_list if not 0 < s <= benchmark.points_available]
    if bad:
      raise SystemExit(f"error: --shots {bad} outside 1..{benchmark.points_available}")
    bad = [t for t in task_ids if not 0 <= t < config.metatest.num_tasks]
    if bad:
      raise SystemExit(f"error: --tasks {bad} outside 0..{config.metatest.num_tasks - 1} "
                       "(config.metatest.num_tasks)")
    methods = available_methods(args.workdir, [m.strip() for m in args.methods.split(",")
                                               if m.strip()])
    template = benchmark.init_params(jax.random.key(0))
    inits = {m: jax.device_put(checkpointing.load_tree(
        os.path.join(args.workdir, "inits", m), template)) for m in methods}
  except Dfl2lError as e:
    raise SystemExit(f"error: {e}")
  steps = args.steps if args.steps is not None else config.metatest.steps
  lr = args.lr if args.lr is not None else config.metatest.lr
  x_grid = jnp.linspace(*sinusoid.DOMAIN, GRID_POINTS, dtype=jnp.float32)[:, None]
  panels = {}
  for shots in shots_list:
    all_eps = benchmark.make_episodes(shots)
    eps = select_tasks(all_eps, task_ids)
    fits = {}
    for m in methods:
      adapted = adapt_all(inits[m], all_eps, benchmark, steps, lr, config.metatest.batch_size,
                          config.metatest.get("step_bound", 0.0))
      adapted = jax.tree.map(lambda x: x[jnp.asarray(task_ids)], adapted)
      fits[m] = curves_and_mse(adapted, eps, x_grid, benchmark)
    panels[shots] = (eps, fits)
  fig = draw(plt, panels, methods, x_grid, task_ids, shots_list, steps, lr, config.seed)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  fig.savefig(args.out, dpi=args.dpi)
  print(f"wrote {args.out} ({', '.join(methods)}; tasks {task_ids}; shots {shots_list})")


if __name__ == "__main__":
  main()
