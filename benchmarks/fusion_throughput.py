r"""DRO fusion throughput: bi-level steps/s of the fusion loops (Algorithms 1 and 2).

  python benchmarks/fusion_throughput.py [--zoos sinusoid,conv4] [--models 1000]
      [--steps 2000] [--conv-hw 84] [--small]

For each zoo, one compiled chunk of `--steps` steps (`fusion.make_offline_chunk`
and `fusion.make_online_chunk`, the code `methods/dfl2l.py` runs) with the
config's fusion settings (meta-batch 1, K = 1, SGD; embedding 100 for the
sinusoid zoo, 50 for Conv4, as configs/sinusoid.py and configs/fewshot_base.py):

  sinusoid  MLP 1-50-50-1 (2,701 parameters per model)
  conv4     Conv4-16, 5-way, `--conv-hw` images (9,541 parameters at 84x84)

The zoo is synthetic (one random initialisation plus small per-model noise);
the cost of a step does not depend on the values. Rows: offline with DRO (the
method), offline without DRO (the `dfl2l_no_dro` ablation) and online with DRO,
each with its ratio to offline-with-DRO. Compile excluded, best of `--repeats`.
One step processes one meta-training and one meta-validation model, so steps/s
is also models/s.
"""

import argparse
import dataclasses
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import fewshot_base
from configs import sinusoid as sinusoid_config
from dfl2l_jax import bilevel
from dfl2l_jax import fusion
from dfl2l_jax import models
from dfl2l_jax import optimizers
from dfl2l_jax import results
from dfl2l_jax.methods import dfl2l


def zoo_config(kind):
  """The run config whose `fusion` section the benchmark uses."""
  if kind == "sinusoid":
    return sinusoid_config.get_config()
  if kind == "conv4":
    return fewshot_base.make("mini_imagenet", 5)
  raise SystemExit(f"unknown zoo {kind!r} (sinusoid, conv4)")


def template(kind, conv_hw=84):
  """Parameters of one target network (numpy)."""
  key = jax.random.key(0)
  if kind == "sinusoid":
    params = models.MLP(hidden=(50, 50), out=1).init(key, jnp.zeros((1, 1)))["params"]
  else:
    net = models.Conv4(ways=5, filters=16, conv_impl="xla")
    params = net.init(key, jnp.zeros((1, conv_hw, conv_hw, 3)))["params"]
  return jax.tree.map(np.asarray, params)


def synthetic_models(tmpl, start, n, seed=0, spread=0.05):
  """Models start..start+n of a synthetic zoo: the template plus per-model noise.

  Model m's noise comes from `default_rng([seed, m])`, so any slice of the zoo
  can be made on its own (the scaling benchmark writes it chunk by chunk).
  """
  leaves, treedef = jax.tree.flatten(tmpl)
  out = [np.empty((n,) + leaf.shape, np.float32) for leaf in leaves]
  for i in range(n):
    rng = np.random.default_rng([seed, start + i])
    for o, leaf in zip(out, leaves):
      o[i] = leaf + spread * rng.standard_normal(leaf.shape, dtype=np.float32)
  return jax.tree.unflatten(treedef, out)


def num_params(tmpl):
  return int(sum(np.size(x) for x in jax.tree.leaves(tmpl)))


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _best(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def measure(kind, n_models, steps, conv_hw, repeats):
  fc = zoo_config(kind).fusion
  tmpl = template(kind, conv_hw)
  zoo = jax.device_put(synthetic_models(tmpl, 0, n_models))
  n_q = int(round(0.2 * n_models))
  zoo_s = jax.tree.map(lambda x: x[:n_models - n_q], zoo)
  zoo_q = jax.tree.map(lambda x: x[n_models - n_q:], zoo)
  optimizer = optimizers.make(fc.optimizer, fc.outer_lr)
  hp = dfl2l.hparams(fc)
  def fresh(n_s=n_models - n_q):
    return bilevel.init_state(jax.random.key(1), tmpl, n_s, max(n_q, 1), fc.embed_dim,
                              optimizer, w_scale=fc.w_scale, embed_init_std=fc.embed_init_std)

  key = jax.random.key(2)
  # Online: `steps` arrivals (S's models again and again), each with its own embedding row.
  arriving = jax.tree.map(lambda x: x[jnp.arange(steps) % (n_models - n_q)], zoo_s)
  rows = {}
  for name, make, call in (
      ("offline_dro", lambda h: fusion.make_offline_chunk(h, optimizer, fc.meta_batch_size),
       lambda chunk: chunk(fresh(), zoo_s, zoo_q, key, length=steps)),
      ("offline_no_dro", lambda h: fusion.make_offline_chunk(
          dataclasses.replace(h, use_dro=False), optimizer, fc.meta_batch_size),
       lambda chunk: chunk(fresh(), zoo_s, zoo_q, key, length=steps)),
      ("online_dro", lambda h: fusion.make_online_chunk(h, optimizer, fc.meta_batch_size),
       lambda chunk: chunk(fresh(steps), arriving, zoo_q, key))):
    chunk = make(hp)
    t0 = time.perf_counter()
    jax.block_until_ready(call(chunk))   # compile
    compile_s = time.perf_counter() - t0
    seconds = _best(lambda: call(chunk), repeats)
    rows[name] = {
        "benchmark": "fusion_throughput", "zoo": kind, "loop": name, "models": n_models,
        "params_per_model": num_params(tmpl), "embed_dim": fc.embed_dim,
        "meta_batch_size": fc.meta_batch_size, "steps": steps, "seconds": round(seconds, 4),
        "compile_and_first_run_s": round(compile_s, 2),
        "steps_per_s": round(steps / seconds, 1),
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "cpu": results.cpu_model(), "date": _now()}
    if kind == "conv4":
      rows[name]["conv_hw"] = conv_hw
  base = rows["offline_dro"]["steps_per_s"]
  for r in rows.values():
    r["ratio_vs_offline_dro"] = round(r["steps_per_s"] / base, 2)
    print(json.dumps(r), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--zoos", default=None, help="default sinusoid,conv4 (small: sinusoid)")
  parser.add_argument("--models", type=int, default=1000, help="zoo size N")
  parser.add_argument("--steps", type=int, default=2000, help="steps per timed chunk")
  parser.add_argument("--conv-hw", type=int, default=84)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--small", action="store_true",
                      help="100 models, 200 steps, 32x32, the sinusoid zoo unless --zoos")
  args = parser.parse_args()
  if args.small:
    args.models, args.steps, args.conv_hw, args.repeats = 100, 200, 32, 1
    args.zoos = args.zoos or "sinusoid"
  args.zoos = args.zoos or "sinusoid,conv4"
  for kind in args.zoos.split(","):
    measure(kind, args.models, args.steps, args.conv_hw, args.repeats)


if __name__ == "__main__":
  main()
