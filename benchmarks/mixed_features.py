r"""Feature extraction of a mixed zoo: one compiled call per architecture group against a
Python loop over the models (issue 29).

  python -m benchmarks.mixed_features [--conv4 40] [--resnets 10] [--tasks 10] [--rounds 3]

A random zoo (the cost of a forward pass does not depend on what a model learned) of
`--conv4` Conv4-32 and `--resnets` ResNet-10 models of widths `--resnet-widths` (the
field's 64-512 are heavy for a CPU) with running BatchNorm statistics, as an imported
zoo; 5-way tasks of 5 shots and 15 queries per class on random 32x32 images. Two ways to
score a task with zoo_features' nearest-centroid head:

  grouped  what zoo_features runs: `support_query_features` (one `lax.map` over each
           group's stacked models, unit-length features concatenated) and the centroid
           head, one compiled call per task;
  loop     one compiled forward per architecture, called model after model from Python,
           the features concatenated and the same head applied.

Both give the same accuracy (checked on the first task). One call each to compile, then
tasks per second over `--tasks` tasks, rounds interleaved; prints a JSON line per way and
round and the ratio grouped / loop per round.
"""

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax.methods import zoo_features as zf
from dfl2l_jax.zoo import store
from tests import helpers

WAYS, SHOTS, QUERY, SIZE = 5, 5, 15, 32


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--conv4", type=int, default=40)
  p.add_argument("--resnets", type=int, default=10)
  p.add_argument("--resnet-widths", default="16,32,64,128")
  p.add_argument("--tasks", type=int, default=10)
  p.add_argument("--rounds", type=int, default=3)
  a = p.parse_args(argv)
  archs = [({"name": "conv4", "filters": 32, "ways": WAYS}, a.conv4),
           ({"name": "resnet10", "ways": WAYS,
             "widths": [int(w) for w in a.resnet_widths.split(",")]}, a.resnets)]
  groups = [(arch, *helpers.random_networks(arch, n, seed, True, SIZE))
            for seed, (arch, n) in enumerate(archs) if n]
  nets = tuple(store.network(arch, head=False) for arch, _, _ in groups)
  state = {"zoo": groups[0][1], "running_stats": groups[0][2],
           "others": [{"zoo": g[1], "running_stats": g[2]} for g in groups[1:]]}
  rng = np.random.default_rng(0)
  tasks = [({"x": jnp.asarray(rng.normal(size=(WAYS * SHOTS, SIZE, SIZE, 3)), jnp.float32),
             "y": jnp.repeat(jnp.arange(WAYS), SHOTS)},
            {"x": jnp.asarray(rng.normal(size=(WAYS * QUERY, SIZE, SIZE, 3)), jnp.float32),
             "y": jnp.repeat(jnp.arange(WAYS), QUERY)}) for _ in range(a.tasks)]

  @jax.jit
  def grouped(st, support, query):
    f_s, f_q = zf.support_query_features(nets, st, support, query)
    return zf.centroid_accuracy(f_s, support["y"], f_q, query["y"], WAYS)

  forwards = [jax.jit(lambda v, x, net=net: zf.model_features(
      net, jax.tree.map(lambda t: t[None], v[0]), x, x,
      jax.tree.map(lambda t: t[None], v[1]))[0]) for net in nets]
  models = [(fwd, (jax.tree.map(lambda t, i=i: t[i], params),
                   jax.tree.map(lambda t, i=i: t[i], stats)))
            for fwd, (_, params, stats) in zip(forwards, groups)
            for i in range(jax.tree.leaves(params)[0].shape[0])]
  head = jax.jit(lambda f_s, y_s, f_q, y_q: zf.centroid_accuracy(f_s, y_s, f_q, y_q, WAYS))

  def loop(st, support, query):
    del st
    f_s = jnp.concatenate([fwd(v, support["x"]) for fwd, v in models], -1)
    f_q = jnp.concatenate([fwd(v, query["x"]) for fwd, v in models], -1)
    return head(f_s, support["y"], f_q, query["y"])

  want = float(grouped(state, *tasks[0]))
  got = float(loop(state, *tasks[0]))
  if abs(want - got) > 1e-3:
    raise SystemExit(f"error: grouped {want} and loop {got} disagree on the first task")
  ways = (("grouped", grouped), ("loop", loop))
  for r in range(a.rounds):
    rates = {}
    for name, fn in ways:
      t = time.perf_counter()
      for support, query in tasks:
        jax.block_until_ready(fn(state, support, query))
      rates[name] = a.tasks / (time.perf_counter() - t)
      print(json.dumps({"benchmark": "mixed_features", "round": r, "way": name,
                        "tasks_per_s": round(rates[name], 3), "conv4": a.conv4,
                        "resnets": a.resnets, "resnet_widths": a.resnet_widths,
                        "device": str(jax.devices()[0].device_kind),
                        "date": datetime.date.today().isoformat()}), flush=True)
    print(json.dumps({"benchmark": "mixed_features", "round": r,
                      "ratio_grouped_over_loop": round(rates["grouped"] / rates["loop"], 3)}),
          flush=True)


if __name__ == "__main__":
  main()
