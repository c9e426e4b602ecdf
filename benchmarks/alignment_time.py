r"""Wall time of the alignment baselines `ota` and `weight_matching` on a zoo.

  python benchmarks/alignment_time.py [--models 100] [--repeats 2]

Zoos: N Conv4-16 models for 84x84 inputs, 5 ways (the head reads 5*5*16
features), and N sinusoid MLPs 1-50-50-1; each either N independent random
models ("random": nothing to find, weight matching runs its longest) or N
permuted noisy copies of one model ("permuted": std 0.1 noise relative to the
weights, every hidden layer permuted). Methods: exact OT fusion, Sinkhorn OT
fusion (ot_reg 0.05, at most 5000 iterations, stopping at a marginal error of
1e-3), weight matching from the identity and from OT's permutations (at most 20 sweeps). `first_s` includes compilation,
`warm_s` is the best of the repeats after it. Prints one JSON line per
(model, zoo, method). The CPU may be shared: the load average is printed.
"""

import argparse
import datetime
import json
import os
import time

import jax
import numpy as np

from dfl2l_jax import models as models_lib
from dfl2l_jax import permutations as perm_lib
from dfl2l_jax.methods import ot_fusion
from dfl2l_jax.methods import weight_matching as wm


def make_zoo(net, x, n, kind, seed=0):
  """n random parameter pytrees (lecun-like scale) with a leading model axis."""
  shapes = jax.eval_shape(net.init, jax.random.key(0), x)["params"]
  rng = np.random.default_rng(seed)

  def draw(s, lead=()):
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    return (rng.normal(size=lead + s.shape) / np.sqrt(fan_in)).astype(np.float32)

  if kind == "random":
    return jax.tree.map(lambda s: draw(s, (n,)), shapes)
  one = jax.tree.map(draw, shapes)
  zoo = jax.tree.map(lambda w: (w[None] + 0.1 * np.std(w) * rng.normal(size=(n,) + w.shape))
                     .astype(np.float32), one)
  spec = perm_lib.spec_from_params(one)
  return jax.device_get(perm_lib.apply_permutation_batched(
      spec, perm_lib.random_perms(spec, seed + 1, n), zoo))


def timed(fn, repeats):
  t = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t
  warm = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    warm = min(warm, time.perf_counter() - t)
  return first, warm, out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  nets = {
      "conv4-16 84x84 5-way": (models_lib.Conv4(ways=5, filters=16),
                               np.zeros((1, 84, 84, 3), np.float32)),
      "mlp 1-50-50-1": (models_lib.MLP(hidden=(50, 50), out=1), np.zeros((1, 1), np.float32)),
  }
  methods = {
      "ota exact": lambda s, z: ot_fusion.ot_fuse(s, z, 0, 0.0, 200),
      "ota sinkhorn reg=0.05": lambda s, z: ot_fusion.ot_fuse(s, z, 0, 0.05, 5000),
      "weight_matching identity": lambda s, z: wm.wm_fuse(s, z, 0, 20, jax.random.key(0)),
      "weight_matching ota-init": lambda s, z: wm.wm_fuse(s, z, 0, 20, jax.random.key(0),
                                                          init="ota"),
  }
  for net_name, (net, x) in nets.items():
    for kind in ("random", "permuted"):
      zoo = make_zoo(net, x, args.models, kind)
      spec = perm_lib.spec_from_params(jax.tree.map(lambda z: z[0], zoo))
      for name, fn in methods.items():
        first, warm, (_, info) = timed(lambda fn=fn: fn(spec, zoo), args.repeats)
        row = {"benchmark": "alignment_time", "model": net_name, "zoo": kind,
               "models": args.models, "method": name, "first_s": round(first, 3),
               "warm_s": round(warm, 3),
               "dist_before": round(info["dist_before"], 3),
               "dist_after": round(info["dist_after"], 3),
               "sweeps": info.get("sweeps"), "loadavg_1min": round(os.getloadavg()[0], 2),
               "cpus": os.cpu_count(), "backend": jax.default_backend(),
               "date": datetime.date.today().isoformat()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
