r"""Conv4 zoo training throughput: the ensemble trainer vs the same models one by one.

  python -m benchmarks.conv_zoo_throughput [--models 100] [--batch 64] [--sizes 32,84] [--steps 3]

For each image size: N Conv4-16 models (5-way, synthetic data, Adam, BatchNorm from
batch statistics) trained by `ensemble.make_ensemble_chunk` with the levers
`auto` picks on this backend, and by `ensemble.make_member_trainer` with the
same per-member step, one model after another. Compile excluded; best of 2.
Prints one JSON line per size: images/s of both and their ratio.
"""

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import optax

from dfl2l_jax import ensemble
from dfl2l_jax import results
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.tasks import fewshot
from tests import helpers


def _best(fn, repeats=2):
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def measure(models, batch, size, steps):
  config = helpers.fewshot_config(zoo__num_models=models, zoo__batch_size=batch, zoo__ways=5)
  bench = fewshot.make_benchmark(config, helpers.synthetic_image_loader(per_class=40,
                                                                         size=size))
  opt = optax.adam(1e-3)
  step = ensemble.make_member_step(bench.loss_fn, opt)
  tasks = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  keys = zoo_lib.member_keys(config)
  params = zoo_lib.initial_params(config, bench)

  chunk = ensemble.make_ensemble_chunk(step, bench.batch_fn, bench.member_loop)
  fresh = lambda: ensemble.init_ensemble(jax.tree.map(jnp.copy, params), opt)
  jax.block_until_ready(chunk(fresh(), tasks, keys, bench.data, length=steps))  # compile
  t_ens = _best(lambda: chunk(fresh(), tasks, keys, bench.data, length=steps))

  train = ensemble.make_member_trainer(step, bench.batch_fn)
  members = [(jax.tree.map(lambda x: x[m], params), jax.tree.map(lambda x: x[m], tasks))
             for m in range(models)]

  def sequential():
    return [train(p, opt.init(p), t, keys[m], bench.data, 0, length=steps)
            for m, (p, t) in enumerate(members)]

  jax.block_until_ready(sequential()[0])  # compile (same shapes for every member)
  t_seq = _best(sequential)
  images = models * batch * steps
  return {"benchmark": "conv_zoo_throughput", "models": models, "batch": batch,
          "size": size, "steps": steps, "conv_impl": bench.model.conv_impl,
          "member_loop": bench.member_loop, "ensemble_images_per_s": round(images / t_ens),
          "sequential_images_per_s": round(images / t_seq),
          "ratio": round(t_seq / t_ens, 2), "device": str(jax.devices()[0].device_kind),
          "cpu": results.cpu_model(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", type=int, default=100)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--sizes", default="32,84")
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  for size in (int(s) for s in args.sizes.split(",")):
    print(json.dumps(measure(args.models, args.batch, size, args.steps)), flush=True)


if __name__ == "__main__":
  main()
