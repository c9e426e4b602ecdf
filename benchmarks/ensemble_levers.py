r"""Throughput of the Conv4 zoo trainer under each implementation lever, in one run.

  python -m benchmarks.ensemble_levers [--models 10] [--batch 32] [--size 32] [--steps 5]

Levers: convolution as XLA's conv or as patches + matmul (models.PatchConv3x3),
members vmapped or `lax.map`-ped (ensemble.make_ensemble_chunk). Each
combination trains the same synthetic 5-way zoo with the project's own step
(Adam, BatchNorm from batch statistics); compile excluded, best of 3. Prints one
JSON line per lever with images/s and the ratio to plain (xla, vmap).
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


def measure(args, conv_impl, member_loop):
  config = helpers.fewshot_config(zoo__num_models=args.models, zoo__batch_size=args.batch,
                                  zoo__ways=5, model__conv_impl=conv_impl,
                                  zoo__member_loop=member_loop)
  loader = helpers.synthetic_image_loader(per_class=40, size=args.size)
  bench = fewshot.make_benchmark(config, loader)
  opt = optax.adam(1e-3)
  chunk = ensemble.make_ensemble_chunk(ensemble.make_member_step(bench.loss_fn, opt),
                                       bench.batch_fn, bench.member_loop)
  tasks = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  keys = zoo_lib.member_keys(config)
  state = ensemble.init_ensemble(zoo_lib.initial_params(config, bench), opt)
  state, _ = chunk(state, tasks, keys, bench.data, length=args.steps)  # compile
  jax.block_until_ready(state)
  best = float("inf")
  for _ in range(3):
    t = time.perf_counter()
    state, _ = chunk(state, tasks, keys, bench.data, length=args.steps)
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - t)
  return args.models * args.batch * args.steps / best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", type=int, default=10)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  base = None
  for conv_impl, member_loop in (("xla", "vmap"), ("xla", "map"), ("patches", "vmap"),
                                 ("patches", "map")):
    rate = measure(args, conv_impl, member_loop)
    base = base or rate
    print(json.dumps({
        "benchmark": "ensemble_levers", "conv_impl": conv_impl, "member_loop": member_loop,
        "models": args.models, "batch": args.batch, "size": args.size,
        "images_per_s": round(rate), "ratio_to_xla_vmap": round(rate / base, 2),
        "device": str(jax.devices()[0].device_kind), "cpu": results.cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}),
        flush=True)


if __name__ == "__main__":
  main()
