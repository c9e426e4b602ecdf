r"""How long importing a teacher zoo takes, and reading it back (results/performance.md).

  python -m benchmarks.import_zoo --num_models=100 --width=32 --image_size=32

Writes `num_models` random teachers in the field's `dfml` files (pth.save, the CloserLook
ConvNet's names with every block aliased, running statistics), then times
launch.import_zoo's work (read every .pth, match the layout, check, write the zoo folder)
and store.load (hash, read and check every file). Prints seconds and models per second.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from dfl2l_jax.zoo import importer
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import pth
from dfl2l_jax.zoo import store


def random_teacher(rng, width, ways, image_size):
  sd, cin = {}, 3
  for i in range(layouts.BLOCKS):
    convs, bns = (f"trunk.{i}.C", f"trunk.{i}.trunk.0"), (f"trunk.{i}.BN", f"trunk.{i}.trunk.1")
    w = rng.normal(0, 0.1, (width, cin, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, width).astype(np.float32)
    for c in convs:
      sd[f"{c}.weight"], sd[f"{c}.bias"] = w, b
    stats = {"weight": np.ones(width, np.float32), "bias": np.zeros(width, np.float32),
             "running_mean": rng.normal(0, 0.1, width).astype(np.float32),
             "running_var": rng.uniform(0.5, 2, width).astype(np.float32)}
    for name in bns:
      for k, v in stats.items():
        sd[f"{name}.{k}"] = v
      sd[f"{name}.num_batches_tracked"] = np.array(100, np.int64)
    cin = width
  f = layouts.feature_map_size(image_size)
  sd["trunk.5.weight"] = rng.normal(0, 0.1, (ways, width * f * f)).astype(np.float32)
  sd["trunk.5.bias"] = np.zeros(ways, np.float32)
  return sd


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_models", type=int, default=100)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=32)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  root = tempfile.mkdtemp(prefix="import_zoo_bench_")
  try:
    src = os.path.join(root, "src")
    os.makedirs(src)
    names = [f"class_{i}" for i in range(64)]
    for i in range(args.num_models):
      pth.save({"teacher": random_teacher(rng, args.width, 5, args.image_size),
                "specific": [int(c) for c in rng.choice(64, 5, replace=False)]},
               os.path.join(src, f"model_specific_{i}.pth"))
    size = sum(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src))
    t0 = time.perf_counter()
    importer.import_zoo("dfml", src, os.path.join(root, "zoo"), class_names=names,
                        image_size=args.image_size, mean=[0.5] * 3, std=[0.25] * 3)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    zoo = store.load(os.path.join(root, "zoo"))
    t_load = time.perf_counter() - t0
    assert zoo.num_models == args.num_models
    print(f"{args.num_models} Conv4-{args.width} teachers at {args.image_size}x"
          f"{args.image_size} ({size / 2**20:.1f} MiB of .pth): import {t_import:.2f} s "
          f"({args.num_models / t_import:.0f} models/s), load {t_load:.2f} s "
          f"({args.num_models / t_load:.0f} models/s)")
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
