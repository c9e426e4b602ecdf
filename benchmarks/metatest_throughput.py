r"""Meta-test throughput (Algorithm 3): tasks/s of `adaptation.meta_test` on Conv4-16.

  python benchmarks/metatest_throughput.py [--tasks 600] [--steps 100] [--hw 32,84]
      [--batch-sizes 10,50,150] [--torch] [--torch-tasks 60] [--bn-impl flax]
      [--zoo-features 100] [--small]

The image setting of the paper's Tables 2-3 at its meta-test: 5-way 10-shot tasks
with 15 query images per class, Conv4 with 16 filters, S steps of full-batch SGD
(alpha = 0.1) on the 50 support images, then the accuracy on the 75 query images
with BatchNorm statistics from the support set. Synthetic data: random uint8
images (20 meta-test classes of 40 images), which is all throughput needs; the
benchmark is built by `tasks.fewshot.make_benchmark`, so loss, gather and metric
are the pipeline's own. `model.conv_impl = auto` (patches on CPU and GPU, XLA's
convolution on TPU); `--bn-impl fused` uses `models.FusedBatchNorm`
(`model.bn_impl`).

For each image size and each `--batch-sizes` value (tasks vmapped together
inside `lax.map`): one call to compile, then the best of `--repeats` calls.
Prints one JSON line per (size, batch size) with tasks/s, adaptation steps/s
(tasks x S per second) and the ratio to the first batch size. With `--torch`,
first runs benchmarks/torch_metatest.py (the PyTorch yardstick, same protocol)
in a subprocess on the same machine with the same sizes and prints a line per
size with the measured ratio ours / torch (best batch size vs each torch
variant). The subprocess keeps the two frameworks from competing for GPU memory.
With `--zoo-features N`, also the `zoo_features` learner (methods/zoo_features.py) of a
random N-model Conv4 zoo on the same tasks (features of every model, BatchNorm from the
support set, nearest centroid; no adaptation steps), and its tasks/s over the best
Algorithm 3 batch size of the same run.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from configs import fewshot_base
from dfl2l_jax import adaptation
from dfl2l_jax import results
from dfl2l_jax.methods import base as methods_base
from dfl2l_jax.methods import zoo_features
from dfl2l_jax.tasks import fewshot

WAYS, SHOTS, QUERY = 5, 10, 15
TEST_CLASSES, PER_CLASS = 20, 40


def random_image_loader(size, seed=0):
  """A `loader(split)` of random uint8 images (tasks.fewshot's loader interface)."""
  def loader(split):
    n = {"train": WAYS, "test": TEST_CLASSES}[split]
    per = 4 if split == "train" else PER_CLASS
    rng = np.random.default_rng([seed, n])
    images = rng.integers(0, 256, size=(n * per, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n, dtype=np.int32), per)
    return images, labels, [f"{split}_{i}" for i in range(n)]
  return loader


def make_setting(size, tasks, steps, bn_impl="flax"):
  config = fewshot_base.make("mini_imagenet", WAYS)
  with config.unlocked():
    config.model.bn_impl = bn_impl
    config.zoo.num_models = 1
    config.metatest.num_tasks = tasks
    config.metatest.query_per_class = QUERY
    config.metatest.steps = steps
  bench = fewshot.make_benchmark(config, random_image_loader(size))
  theta = bench.init_params(jax.random.key(0))
  return config, bench, theta, bench.make_episodes(SHOTS)


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def measure(size, tasks, steps, batch_sizes, repeats, bn_impl="flax"):
  config, bench, theta, episodes = make_setting(size, tasks, steps, bn_impl)
  mt = config.metatest
  rows = []
  for bs in batch_sizes:
    run = lambda bs=bs: adaptation.meta_test(
        theta, episodes, loss_fn=bench.loss_fn, metric_fn=bench.metric_fn, steps=steps,
        lr=mt.lr, batch_size=bs, gather_fn=bench.gather_episode, data=bench.data)
    t0 = time.perf_counter()
    acc = run()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      acc = run()   # returns numpy: the device work is finished
      best = min(best, time.perf_counter() - t0)
    rows.append({
        "benchmark": "metatest_throughput", "impl": "dfl2l_jax", "size": size,
        "tasks": tasks, "steps": steps, "ways": WAYS, "shots": SHOTS, "query": QUERY,
        "filters": config.model.filters, "conv_impl": bench.model.conv_impl,
        "bn_impl": bench.model.bn_impl,
        "batch_size": min(bs, tasks), "seconds": round(best, 4),
        "compile_and_first_run_s": round(first, 2),
        "tasks_per_s": round(tasks / best, 2), "steps_per_s": round(tasks * steps / best, 1),
        "mean_accuracy": round(float(np.mean(acc)), 3),
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "cpu": results.cpu_model(), "date": _now()})
  base = rows[0]["tasks_per_s"]
  for r in rows:
    r["ratio_vs_first_batch_size"] = round(r["tasks_per_s"] / base, 2)
    print(json.dumps(r), flush=True)
  return max(rows, key=lambda r: r["tasks_per_s"])


def measure_zoo_features(size, tasks, n_models, batch_size, repeats, init_best):
  """tasks/s of the zoo_features learner with a random n_models zoo, beside Algorithm 3."""
  config, bench, _, episodes = make_setting(size, tasks, 1)
  del config
  zoo = jax.vmap(bench.init_params)(jax.random.split(jax.random.key(1), n_models))
  learner = methods_base.Learner(
      {"zoo": zoo}, zoo_features._centroid_scorer((bench.model.clone(head=False),), WAYS), None)  # pylint: disable=protected-access
  run = lambda: adaptation.score_learner(learner, episodes, batch_size=batch_size,
                                         gather_fn=bench.gather_episode, data=bench.data)
  t0 = time.perf_counter()
  run()
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t0)
  row = {"benchmark": "zoo_features_throughput", "size": size, "tasks": tasks,
         "zoo_models": n_models, "batch_size": min(batch_size, tasks),
         "seconds": round(best, 4), "compile_and_first_run_s": round(first, 2),
         "tasks_per_s": round(tasks / best, 2),
         "algorithm3_tasks_per_s": init_best["tasks_per_s"],
         "algorithm3_steps": init_best["steps"],
         "ratio_zoo_features_over_algorithm3": round(tasks / best / init_best["tasks_per_s"], 3),
         "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
         "cpu": results.cpu_model(), "date": _now()}
  print(json.dumps(row), flush=True)


def run_torch(size, args):
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_metatest.py")
  cmd = [sys.executable, script, "--tasks", str(args.torch_tasks), "--steps", str(args.steps),
         "--hw", str(size), "--variants", args.torch_variants,
         "--vmap-batch", str(args.torch_vmap_batch), "--repeats", str(args.repeats)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  for r in rows:
    print(json.dumps(r), flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", type=int, default=600)
  parser.add_argument("--steps", type=int, default=100, help="S, adaptation steps")
  parser.add_argument("--hw", default="32,84", help="image sizes, comma-separated")
  parser.add_argument("--batch-sizes", default="10,50,150",
                      help="tasks vmapped together, comma-separated")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--torch", action="store_true",
                      help="also run benchmarks/torch_metatest.py and print ratios")
  parser.add_argument("--torch-tasks", type=int, default=60,
                      help="tasks of the torch run (tasks/s is a rate; the loop is linear)")
  parser.add_argument("--torch-variants", default="loop,vmap")
  parser.add_argument("--torch-vmap-batch", type=int, default=50)
  parser.add_argument("--bn-impl", default="flax", choices=("flax", "fused"),
                      help="config.model.bn_impl of our side")
  parser.add_argument("--zoo-features", type=int, default=0, metavar="N",
                      help="also time the zoo_features learner with an N-model zoo")
  parser.add_argument("--small", action="store_true",
                      help="seconds on a CPU: 8 tasks, 5 steps, 32x32, batch sizes 1,8")
  args = parser.parse_args()
  if args.small:
    args.tasks, args.steps, args.hw, args.batch_sizes = 8, 5, "32", "1,8"
    args.repeats, args.torch_tasks, args.torch_vmap_batch = 1, 8, 8
  sizes = [int(s) for s in args.hw.split(",")]
  # The torch runs go first, before JAX touches (and preallocates) the GPU.
  torch_rows = {size: run_torch(size, args) if args.torch else [] for size in sizes}
  for size in sizes:
    best = measure(size, args.tasks, args.steps,
                   [int(b) for b in args.batch_sizes.split(",")], args.repeats, args.bn_impl)
    if args.zoo_features:
      measure_zoo_features(size, args.tasks, args.zoo_features, best["batch_size"],
                           args.repeats, best)
    for t in torch_rows[size]:
      print(json.dumps({
          "benchmark": "metatest_ratio", "size": size, "steps": args.steps,
          "ours": f"dfl2l_jax batch_size={best['batch_size']}",
          "ours_tasks_per_s": best["tasks_per_s"], "torch": t["impl"],
          "torch_tasks_per_s": t["tasks_per_s"],
          "ratio_ours_over_torch": round(best["tasks_per_s"] / t["tasks_per_s"], 2),
          "device": best["device"], "torch_device": t["device"], "cpu": best["cpu"],
          "date": _now()}), flush=True)


if __name__ == "__main__":
  main()
