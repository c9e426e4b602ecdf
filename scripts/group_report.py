r"""Each architecture group of a zoo folder on meta-validation classes: its single models,
and the group as zoo_features' ensemble (issue 29: what a group adds, or why not).

  python scripts/group_report.py --config=configs/cifarfs_5way.py:proxy,data_free \
      --config.data.manual_dir=DATA --config.zoo.source=ZOO [--shots=1,5] [--tasks=100]

For each shot count, on `--tasks` episodes of the benchmark's meta-validation classes
(never the test tasks; the episodes of zoo_features' selection), each group's models are
scored alone (nearest class centroid of the model's own unit-length features, BatchNorm
by its own statistics, or the support set's where the zoo carries none, as zoo_features
does) and together (the group's features concatenated, as zoo_features
with only that group); a zoo of several groups adds every model together. Prints one table
per shot count; `--out FILE` also writes the numbers as JSON.
"""

import functools
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from dfl2l_jax import adaptation
from dfl2l_jax import checkpointing
from dfl2l_jax import pipeline
from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import zoo_features as zf
from dfl2l_jax.zoo import store

FLAGS = flags.FLAGS


def define_flags():
  """The script's flags (defined when it runs, so that importing it defines none)."""
  config_flags.DEFINE_config_file("config", None, "The run's config (and overrides).")
  flags.DEFINE_list("shots", ["1", "5"], "Shot counts.")
  flags.DEFINE_integer("tasks", 100, "Meta-validation episodes per shot count.")
  flags.DEFINE_string("out", "", "Also write the numbers to this JSON file.")


def scores(benchmark, groups, shots, tasks):
  """{group name or "all": (tasks, ...) accuracies}: each group's models alone (tasks, n)
  and together (tasks, 1); "all" every group together (tasks, 1)."""
  ways = int(benchmark.spec["ways"])
  episodes, data, gather = benchmark.validation_episodes(shots, tasks)
  score = lambda state, fn: np.asarray(adaptation.score_learner(
      base.Learner(state, fn, None), episodes, batch_size=16, gather_fn=gather, data=data))
  nets = tuple(store.network(g.architecture, head=False) for g in groups)
  states = [{"zoo": jax.tree.map(jnp.asarray, g.params)} for g in groups]
  for g, state in zip(groups, states):
    if g.bn_stats is not None:  # else BatchNorm by the support set's statistics
      state["running_stats"] = jax.tree.map(jnp.asarray, g.bn_stats)
  out = {}
  for g, net, state in zip(groups, nets, states):
    out[g.name] = (score(state, functools.partial(zf.per_model_accuracy, net, ways)),
                   score(state, functools.partial(together, (net,), ways))[:, None])
  if len(groups) > 1:
    every = dict(states[0], others=states[1:])
    out["all"] = score(every, functools.partial(together, nets, ways))[:, None]
  return out


def together(nets, ways, state, support, query):
  """zoo_features' nearest-centroid accuracy of one task, every model of `nets`' groups
  weighing the same."""
  f_s, f_q = zf.support_query_features(nets, state, support, query)
  return zf.centroid_accuracy(f_s, support["y"], f_q, query["y"], ways)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  if config is None or not config.zoo.get("source", ""):
    sys.exit("error: --config and --config.zoo.source (a zoo folder) are required")
  try:
    benchmark = pipeline.prepare(config)
  except Dfl2lError as e:
    sys.exit(f"error: {e}")
  zoo = benchmark.imported_zoo
  if benchmark.validation_episodes is None:
    sys.exit("error: the benchmark has no meta-validation classes")
  report = {"zoo": zoo.directory, "tasks": FLAGS.tasks, "shots": {}}
  for k in (int(s) for s in FLAGS.shots):
    table = scores(benchmark, zoo.groups, k, FLAGS.tasks)
    print(f"\n{k} shots, {FLAGS.tasks} meta-validation episodes (accuracy %, mean over "
          "episodes; models alone: mean over the group's models, [min, max])")
    print(f"  {'group':28s} {'models':>6s} {'alone':>6s} {'min':>6s} {'max':>6s} {'together':>8s}")
    rows = {}
    for g in zoo.groups:
      alone, together = table[g.name]
      per_model = alone.mean(0)
      rows[g.name] = {"models": len(g.indices), "alone": per_model.tolist(),
                      "together": float(together.mean())}
      print(f"  {g.name:28s} {len(g.indices):6d} {per_model.mean():6.2f} {per_model.min():6.2f} "
            f"{per_model.max():6.2f} {together.mean():8.2f}")
    if "all" in table:
      rows["all"] = {"models": zoo.num_models, "together": float(table["all"].mean())}
      print(f"  {'all, every model equal':28s} {zoo.num_models:6d} {'':6s} {'':6s} {'':6s} "
            f"{table['all'].mean():8.2f}")
    report["shots"][str(k)] = rows
  if FLAGS.out:
    checkpointing.write_json_atomic(FLAGS.out, report)


if __name__ == "__main__":
  define_flags()
  app.run(main)
