r"""Model inversion throughput: images optimised per second, the whole zoo's step (vmap,
lax.map, or one model per compiled call) vs one model at a time.

  python -m benchmarks.inversion_throughput [--models 20] [--hw 32] [--filters 16]
      [--resnet-widths 8,16,32,64] [--ways 5] [--per-class 10] [--steps 10] [--repeats 3]

A random zoo (the inversion step's cost does not depend on what the models learned):
Conv4 of `--filters` with BatchNorm statistics of ones and zeros, or with
`--resnet-widths` the CloserLook ResNet-10 of those widths with random statistics;
`inversion.make_chunk` as the pipeline runs it (DeepInversion's loss, Adam on the
images, jitter and flips). Four ways to invert N models for `--steps` steps:

  vmapped     one compiled chunk over all N models, the step vmapped over them;
  mapped      the same chunk with `lax.map` over the models inside the step
              (member_loop "map");
  looped      member_loop "loop": one model's gradient per compiled call, models and
              steps looped from Python, one compiled Adam update per step;
  one by one  the vmapped chunk on one model, called N times (a loop over the zoo).

For each: one call to compile, then the best of `--repeats` calls; `--rounds`
interleaves them so that a load that comes and goes hits all of them. Prints a JSON
line per way and round with images/s (N x R x P images, each updated `--steps` times,
per second) and, per round, each way's ratio to one by one and looped / vmapped.
"""

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import inversion
from dfl2l_jax import models
from dfl2l_jax.zoo import store
from tests import helpers


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", type=int, default=20)
  p.add_argument("--hw", type=int, default=32)
  p.add_argument("--filters", type=int, default=16)
  p.add_argument("--resnet-widths", default="",
                 help="comma-separated widths of a ResNet-10 zoo instead of Conv4")
  p.add_argument("--ways", type=int, default=5)
  p.add_argument("--per-class", type=int, default=10)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--rounds", type=int, default=1)
  a = p.parse_args(argv)

  shape = (a.hw, a.hw, 3)
  if a.resnet_widths:
    conv_impl, arch = "xla", {"name": "resnet10", "ways": a.ways,
                              "widths": [int(w) for w in a.resnet_widths.split(",")]}
    net = store.network(arch)
    zoo, stats = helpers.random_networks(arch, a.models, 0, True, a.hw)
    zoo, stats = jax.tree.map(jnp.asarray, (zoo, stats))
    network = "resnet10-" + "-".join(str(w) for w in arch["widths"])
  else:
    conv_impl = "xla" if jax.default_backend() == "tpu" else "patches"
    net = models.Conv4(ways=a.ways, filters=a.filters, conv_impl=conv_impl)
    zoo = jax.jit(jax.vmap(lambda k: net.init(k, jnp.zeros((1,) + shape))["params"]))(
        jax.random.split(jax.random.key(0), a.models))
    stats = {f"BatchNorm_{i}": {"mean": jnp.zeros((a.models, a.filters)),
                                "var": jnp.ones((a.models, a.filters))} for i in range(4)}
    network = f"conv4-{a.filters}"
  hp = inversion.InversionHParams(images_per_class=a.per_class, lr=0.1, bn_weight=0.05,
                                  tv_weight=1e-3, l2_weight=1e-4, jitter=2, flip=True)
  chunk, optimizer = inversion.make_chunk(net, a.ways, hp, "vmap")
  mapped_chunk, _ = inversion.make_chunk(net, a.ways, hp, "map")
  looped_chunk, _ = inversion.make_chunk(net, a.ways, hp, "loop")
  images = inversion.init_images(jax.random.key(1), a.models, a.ways, hp, shape)
  key = jax.random.key(2)

  def state(rows):
    x = images[rows]
    return inversion.InversionState(x, optimizer.init(x), jnp.int32(0))

  sub = lambda t, rows: jax.tree.map(lambda v: v[rows], t)
  all_rows = np.arange(a.models)
  singles = [(state(np.array([m])), sub(zoo, np.array([m])), sub(stats, np.array([m])),
              jnp.array([m])) for m in range(a.models)]

  def whole_zoo(fn):
    def run():
      out, _ = fn(state(all_rows), zoo, stats, jnp.asarray(all_rows), key, length=a.steps)
      return out.images
    return run

  def one_by_one():
    return [chunk(s, z, st, i, key, length=a.steps)[0].images for s, z, st, i in singles]

  ways = (("vmapped", whole_zoo(chunk)), ("mapped", whole_zoo(mapped_chunk)),
          ("looped", whole_zoo(looped_chunk)), ("one_by_one", one_by_one))
  for _, fn in ways:
    jax.block_until_ready(fn())  # compile
  n_images = a.models * a.ways * a.per_class * a.steps
  for r in range(a.rounds):
    rates = {}
    for name, fn in ways:
      best = float("inf")
      for _ in range(a.repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
      rates[name] = n_images / best
      print(json.dumps({
          "benchmark": "inversion_throughput", "round": r, "way": name, "models": a.models,
          "hw": a.hw, "network": network, "ways": a.ways, "per_class": a.per_class,
          "steps": a.steps, "seconds": round(best, 4), "images_per_s": round(rates[name], 1),
          "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "date": datetime.date.today().isoformat(), "conv_impl": conv_impl}), flush=True)
    ratios = {f"ratio_{w}_over_one_by_one": round(rates[w] / rates["one_by_one"], 3)
              for w in ("vmapped", "mapped", "looped")}
    print(json.dumps({"benchmark": "inversion_throughput", "round": r, "network": network,
                      **ratios, "ratio_looped_over_vmapped":
                          round(rates["looped"] / rates["vmapped"], 3)}), flush=True)

if __name__ == "__main__":
  main()
