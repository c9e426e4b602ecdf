r"""Why OT fusion beats vanilla averaging on the sinusoid zoo (results/sinusoid.md).

For each finished offline run (one workdir per seed) this reuses the run's zoo
and test tasks and reports, per layer: how far training moved the models from
their shared initialisation, the models' squared distance to the OT reference
before and after alignment, and the norm of the fused parameters (VA, OTA, and
the average after random permutations as a control); then it meta-tests
averages where only one hidden layer's units are aligned (the other keeps the
identity), to see which layer's alignment carries the gain.

  python -m scripts.investigate_ota --out results/raw/ota_investigation.jsonl \
      workdirs/sinusoid/seed1 ... workdirs/sinusoid/seed5

Exact OT (reg 0), reference closest_to_mean, one round: the `ota` defaults.
One JSON line per seed goes to --out; a summary table is printed.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import permutations as perm_lib
from dfl2l_jax import pipeline
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.methods import ot_fusion
from scripts.sensitivity import load_run_config


def layer_stats(models, aligned, reference, init):
  """Per parameter: drift from the initialisation and distance to the reference."""
  out = {}
  n = jax.tree.leaves(models)[0].shape[0]
  flat = jax.tree_util.tree_flatten_with_path(models)[0]
  for (path, m), a, r, i0 in zip(flat, jax.tree.leaves(aligned), jax.tree.leaves(reference),
                                 jax.tree.leaves(init)):
    m, a, r, i0 = (np.asarray(x, np.float64) for x in (m, a, r, i0))
    i0 = i0[0] if i0.shape == m.shape else i0   # initial_params has a model axis.
    out[jax.tree_util.keystr(path)] = {
        "init_norm": float(np.linalg.norm(i0)),
        "mean_drift_from_init": float(np.linalg.norm((m - i0).reshape(n, -1), axis=1).mean()),
        "mean_model_norm": float(np.linalg.norm(m.reshape(n, -1), axis=1).mean()),
        "sqdist_to_ref_before": float(((m - r[None]) ** 2).reshape(n, -1).sum(1).mean()),
        "sqdist_to_ref_after": float(((a - r[None]) ** 2).reshape(n, -1).sum(1).mean()),
    }
  return out


def norms(params):
  return {jax.tree_util.keystr(p): float(np.linalg.norm(np.asarray(x)))
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def run_seed(workdir):
  config = load_run_config(workdir)
  bench = pipeline.prepare(config)
  run = pipeline.RunContext.start(config, bench, workdir)
  zoo = zoo_lib.train_zoo(config, bench, workdir, mesh=run.models_mesh)  # restores it
  init = jax.device_get(zoo_lib.initial_params(config, bench))
  episodes = {s: bench.make_episodes(s) for s in config.shots}
  spec = perm_lib.spec_from_params(bench.init_params(jax.random.key(0)))
  models = jax.device_get(zoo)
  n = jax.tree.leaves(models)[0].shape[0]
  s_idx, _ = zoo_lib.split(config)
  ref_idx = perm_lib.choose_reference(zoo, s_idx, config.ota.align_reference)
  reference = jax.tree.map(lambda x: x[ref_idx], models)
  aligned, maps = ot_fusion.ot_align(spec, reference, models, 0.0, 0)
  names = [p.name for p in spec.perms]
  identity = perm_lib.identity_perms(spec, n)
  inits = {"va": perm_lib.average(models), "ota": perm_lib.average(aligned),
           "random_permutations": perm_lib.average(perm_lib.apply_permutation_batched(
               spec, perm_lib.random_perms(spec, 0, n), models))}
  for name in names:
    only = dict(identity)
    only[name] = maps[name]
    inits[f"ota_only_{name}"] = perm_lib.average(
        perm_lib.apply_permutation_batched(spec, only, models))
  scores = {}
  for name, theta in inits.items():
    rows = pipeline.meta_test_rows(run, name, jax.tree.map(jnp.asarray, theta), episodes)
    scores[name] = {int(r["shots"]): r["mean"] for r in rows}
  return {
      "workdir": workdir, "seed": int(config.seed), "reference": int(ref_idx),
      "units_moved": {k: float(np.mean(maps[k] != np.arange(maps[k].shape[-1])))
                      for k in names},
      "layers": layer_stats(models, aligned, reference, init),
      "fused_norms": {k: norms(v) for k, v in inits.items() if k in
                      ("va", "ota", "random_permutations")},
      "meta_test": scores, "metric": bench.metric}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", required=True, help="JSON lines, one per seed")
  args = parser.parse_args()
  results = [run_seed(w) for w in args.workdirs]
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    for r in results:
      f.write(json.dumps(r, sort_keys=True) + "\n")
  os.replace(tmp, args.out)
  methods = list(results[0]["meta_test"])
  shots = sorted(results[0]["meta_test"]["va"])
  print("mean over seeds (" + results[0]["metric"] + "):")
  for m in methods:
    vals = [np.mean([r["meta_test"][m][s] for r in results]) for s in shots]
    diffs = [np.array([r["meta_test"][m][s] - r["meta_test"]["va"][s] for r in results])
             for s in shots]
    print(f"  {m:24s} " + "  ".join(
        f"{s}-shot {v:7.3f} (vs va {d.mean():+.3f})" for s, v, d in zip(shots, vals, diffs)))
  print("per layer, mean over seeds:")
  for layer in results[0]["layers"]:
    st = {k: np.mean([r["layers"][layer][k] for r in results])
          for k in results[0]["layers"][layer]}
    fused = {m: np.mean([r["fused_norms"][m][layer] for r in results])
             for m in results[0]["fused_norms"]}
    print(f"  {layer:24s} init {st['init_norm']:6.2f} drift {st['mean_drift_from_init']:6.2f} "
          f"model {st['mean_model_norm']:6.2f} | sqdist to ref {st['sqdist_to_ref_before']:8.3f}"
          f" -> {st['sqdist_to_ref_after']:8.3f} | norm va {fused['va']:6.2f} ota "
          f"{fused['ota']:6.2f} randperm {fused['random_permutations']:6.2f}")
  moved = {k: np.mean([r["units_moved"][k] for r in results]) for k in results[0]["units_moved"]}
  print("units moved by OT:", {k: round(float(v), 3) for k, v in moved.items()})


if __name__ == "__main__":
  main()
