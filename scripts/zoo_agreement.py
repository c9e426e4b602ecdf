r"""How much each model of a (contaminated) run's zoo agrees with the rest of the zoo and
with untrained networks, on meta-validation images only (issue 30: a screening score other
than a model's own accuracy; results/untrusted_zoo.md).

  python scripts/zoo_agreement.py --workdir=W [--manual_dir=DATA] [--shots=5] [--tasks=50]

W is a finished run of `launch.offline` (its results.json gives the config and, for a
contaminated zoo, which models are bad; its zoo is read from config.zoo.source, else from
W/zoo_models, with the run's contamination applied as the run did). On `--tasks` episodes of
the meta-validation classes (the screen's episodes; never a test task), each model's
unit-length features of the episode's images (BatchNorm as zoo_features: the support set's
statistics, or the model's own) give a kernel over the images; two models agree as much as
their centred kernels align (linear CKA, Kornblith et al. 2019). A model's scores: its mean
CKA with the zoo's other models, and with `--references` untrained networks of its
architecture (the untrained screen's own). Prints, per kind of model, the scores' range and
the models ranked by each score, and the mean CKA among the models of each kind; `--out
FILE` writes every model's scores as JSON.
"""

import json
import os
import sys
import types

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfl2l_jax import adaptation
from dfl2l_jax import checkpointing
from dfl2l_jax import pipeline
from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import zoo_features as zf
from dfl2l_jax.zoo import contamination
from dfl2l_jax.zoo import source as zoo_source

FLAGS = flags.FLAGS


def define_flags():
  """The script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("workdir", None, "A finished run's workdir.")
  flags.DEFINE_string("manual_dir", "", "The dataset's folder, if not the run's.")
  flags.DEFINE_integer("shots", 5, "Shots of the meta-validation episodes.")
  flags.DEFINE_integer("tasks", 50, "Meta-validation episodes.")
  flags.DEFINE_integer("references", 8, "Untrained networks.")
  flags.DEFINE_string("out", "", "Also write every model's scores to this JSON file.")


def linear_cka(f):
  """(N, N): linear CKA between every two of N representations f (N, n, D) of the same n
  images: the alignment of their centred kernels, <K_a, K_b> / (|K_a| |K_b|)."""
  n = f.shape[1]
  centre = jnp.eye(n) - 1.0 / n
  k = jnp.einsum("ij,mjd,mkd,kl->mil", centre, f, f, centre)
  inner = jnp.einsum("mij,pij->mp", k, k)
  norm = jnp.sqrt(jnp.diagonal(inner))
  return inner / (norm[:, None] * norm[None, :])


def cka_matrix(net, state, support, query):
  """(N, N): linear_cka of every model's features of one episode's images."""
  x = jnp.concatenate([support["x"], query["x"]])
  return linear_cka(zf.model_features(net, state["zoo"], x, support["x"],
                                      state.get("running_stats")))


def load_zoo(workdir, manual_dir):
  """(config, benchmark, zoo, running, bad kinds {kind: indices}) of the run in workdir."""
  path = os.path.join(workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
    raise Dfl2lError(f"{path} holds no run config: not the results.json of a finished run")
  config = ml_collections.ConfigDict(results["config"])
  spec = contamination.spec_of(config)
  if not config.zoo.get("source", ""):
    config.zoo.source = os.path.join(workdir, zoo_source.TRAINED_ZOO)
  if manual_dir:
    config.data.manual_dir = manual_dir
  config.zoo.contamination = ""  # a folder with contamination is refused; applied below
  benchmark = pipeline.prepare(config)
  imported = benchmark.imported_zoo
  if imported.mixed:
    raise Dfl2lError(f"{config.zoo.source}: a zoo of several architectures; this script "
                     "reads one")
  zoo = jax.tree.map(jnp.asarray, imported.groups[0].params)
  running = (jax.tree.map(jnp.asarray, imported.groups[0].bn_stats)
             if imported.manifest["batch_norm"] == "running" else None)
  config.zoo.contamination = spec
  # The kinds made while the zoo trained are in its folder already; the others are applied.
  zoo, running, record = contamination.apply(config, benchmark, zoo, running)
  return config, benchmark, zoo, running, (record or {}).get("models", {})


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    sys.exit("error: --workdir is required")
  try:
    config, benchmark, zoo, running, bad = load_zoo(FLAGS.workdir, FLAGS.manual_dir)
  except (Dfl2lError, OSError, KeyError, ValueError) as e:  # ValueError: not JSON
    sys.exit(f"error: {FLAGS.workdir}: {e}")
  if benchmark.validation_episodes is None:
    sys.exit("error: the benchmark has no meta-validation classes")
  n = jax.tree.leaves(zoo)[0].shape[0]
  state = {"zoo": zoo, **({"running_stats": running} if running is not None else {})}
  refs = zf.untrained_references(types.SimpleNamespace(config=config, benchmark=benchmark),
                                 state, FLAGS.references)
  both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), state, refs)
  episodes, data, gather = benchmark.validation_episodes(FLAGS.shots, FLAGS.tasks)
  net = benchmark.model
  cka = adaptation.score_learner(
      base.Learner(both, lambda st, s, q: cka_matrix(net, st, s, q), None), episodes,
      batch_size=10, gather_fn=gather, data=data).mean(0)
  others = cka[:n, :n] + np.diag(np.full(n, np.nan))
  scores = {"zoo": np.nanmean(others, 1), "untrained": cka[:n, n:].mean(1)}
  kind = np.array(["good"] * n, dtype=object)
  for k, idx in bad.items():
    kind[idx] = k
  print(f"{FLAGS.workdir}: {n} models ({', '.join(f'{k} {len(v)}' for k, v in bad.items())}"
        f"{'; ' if bad else ''}the rest good), linear CKA on {FLAGS.tasks} {FLAGS.shots}-shot "
        "meta-validation episodes")
  refs_among = cka[n:, n:][~np.eye(FLAGS.references, dtype=bool)]
  print(f"  untrained networks with each other: {np.median(refs_among):.3f} "
        f"[{refs_among.min():.3f}, {refs_among.max():.3f}]")
  for name, s in scores.items():
    print(f"  with the {name + (' networks' if name == 'untrained' else ' (other models)')}:")
    for k in dict.fromkeys(kind):
      v = s[kind == k]
      print(f"    {k:16s} {len(v):3d} models: median {np.median(v):.3f} [{v.min():.3f}, "
            f"{v.max():.3f}]")
    print("    ranked low to high (. good, B bad): "
          + "".join("." if kind[i] == "good" else "B" for i in np.argsort(s)))
  within = {k: float(np.nanmean(others[np.ix_(kind == k, kind == k)]))
            for k in dict.fromkeys(kind)}
  print("  mean CKA among the models of one kind: "
        + ", ".join(f"{k} {v:.3f}" for k, v in within.items()))
  if FLAGS.out:
    checkpointing.write_json_atomic(FLAGS.out, {
        "workdir": FLAGS.workdir, "shots": FLAGS.shots, "tasks": FLAGS.tasks,
        "kind": kind.tolist(), **{f"cka_{k}": np.round(v, 4).tolist() for k, v in scores.items()},
        "within_kind": {k: round(v, 4) for k, v in within.items()},
        "untrained_with_each_other": np.round(refs_among, 4).tolist()})


if __name__ == "__main__":
  define_flags()
  app.run(main)
