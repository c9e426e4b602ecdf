r"""Our zoo trainer against the field's PyTorch teacher loop, side by side in one process.

  python -m benchmarks.producer_vs_torch                       # 4 models, 3 rounds
  python -m benchmarks.producer_vs_torch --rounds 5 --variants auto,fused,xla_map
  python -m benchmarks.producer_vs_torch --no-torch            # ours only

Both sides train Conv4-32 teachers on 32x32 images, 5 ways, a batch of 128 per step:

- torch: `scripts/torch_zoo.py`'s loop, the field's (FREE / TGR / PURER-Plus) recipe:
  its CloserLook `ConvNet`, one teacher after another, each step indexing a batch out
  of the teacher's normalised training tensor, cross-entropy, backward, gradient norm
  clipped to 50, Adam 0.01. torch's default thread count (it also runs with one thread,
  `--torch-threads`, since a 2-thread pool can collapse on a shared machine).
- ours: the zoo trainer's own step (`ensemble.make_ensemble_chunk` over the benchmark's
  `loss_fn` and `batch_fn`, as `zoo.trainer.train_zoo` builds it: BatchNorm from batch
  statistics, Adam, each member's batch gathered from the uint8 image array and
  normalised), `--models` members in one compiled chunk of `--steps` steps.
  Variants set the levers of the config: `auto` (what a run uses on this backend),
  `fused` (model.bn_impl = "fused"), and `CONV_LOOP` such as `xla_map`, `patches_vmap`
  (model.conv_impl, zoo.member_loop).

Images per second = models x batch x steps / seconds, compile excluded, best of
`--repeats` per measurement; rounds interleave every row so that a load that comes and
goes hits all of them. The summary prints the median images/s of each row and, per
round, ours / torch (the ratio this benchmark exists for). Synthetic images (the speed
of a step does not depend on what the pixels show). torch is optional: without it, or
with --no-torch, only our rows run.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import ensemble
from dfl2l_jax import optimizers
from dfl2l_jax import results
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.tasks import fewshot
from tests import helpers

WIDTH, WAYS, SIZE, BATCH = 32, 5, 32, 128


def torch_rate(torch_zoo, threads, steps, repeats, n_train=640):
  """images/s of the field's teacher step (scripts/torch_zoo.py) on one teacher."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel
  previous = torch.get_num_threads()
  if threads:
    torch.set_num_threads(threads)
  try:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train, SIZE, SIZE, 3), dtype=np.uint8)
    x_train = torch_zoo.to_inputs(images, SIZE, torch_zoo.CIFAR_MEAN,
                                  torch_zoo.CIFAR_STD)
    y_train = torch.from_numpy(rng.integers(0, WAYS, n_train))
    torch.manual_seed(0)
    model = torch_zoo.ConvNet(WIDTH, WAYS, SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()

    def run():
      for _ in range(steps):
        batch = torch.from_numpy(rng.integers(0, n_train, BATCH))
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), torch_zoo.GRAD_CLIP_NORM)
        optimizer.step()
      return loss.item()

    run()  # warm-up (oneDNN primitives)
    best = min(_timed(run) for _ in range(repeats))
  finally:
    torch.set_num_threads(previous)
  return BATCH * steps / best


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def variant_overrides(variant):
  """`auto` | `fused` | CONV_LOOP (e.g. xla_map) -> config overrides."""
  if variant == "auto":
    return {}
  if variant == "fused":
    return {"model__bn_impl": "fused"}
  conv, _, loop = variant.partition("_")
  if conv not in ("xla", "patches") or loop not in ("vmap", "map"):
    raise ValueError(f"variant must be auto, fused or CONV_LOOP (xla|patches)_(vmap|map), "
                     f"got {variant!r}")
  return {"model__conv_impl": conv, "zoo__member_loop": loop}


def make_ours(variant, n_models, steps):
  """A function running one chunk of our zoo trainer's steps; returns it and a state."""
  config = helpers.fewshot_config(zoo__num_models=n_models, zoo__batch_size=BATCH,
                                  zoo__ways=WAYS, model__filters=WIDTH,
                                  **variant_overrides(variant))
  bench = fewshot.make_benchmark(
      config, helpers.synthetic_image_loader(n_train_classes=20, per_class=40, size=SIZE))
  optimizer = optimizers.make(config.zoo.optimizer, config.zoo.lr)
  chunk = ensemble.make_ensemble_chunk(ensemble.make_member_step(bench.loss_fn, optimizer),
                                       bench.batch_fn, bench.member_loop)
  tasks = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  keys = zoo_lib.member_keys(config)
  state = ensemble.init_ensemble(zoo_lib.initial_params(config, bench), optimizer)
  resolved = f"{bench.model.conv_impl}_{bench.member_loop}_{bench.model.bn_impl}"
  return (lambda st: chunk(st, tasks, keys, bench.data, length=steps)[0]), state, resolved


def ours_rate(run, state, n_models, steps, repeats):
  state = jax.block_until_ready(run(state))  # compile
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    state = jax.block_until_ready(run(state))
    best = min(best, time.perf_counter() - t)
  return n_models * BATCH * steps / best, state


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", type=int, default=4, help="members of our ensemble")
  parser.add_argument("--steps", type=int, default=10, help="steps per timed call")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--variants", default="auto", help="comma list: auto, fused, CONV_LOOP")
  parser.add_argument("--torch-threads", default="0,1",
                      help="comma list of torch thread counts; 0: torch's default")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  for name in ("models", "steps", "repeats", "rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  torch_zoo = None
  if not args.no_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      print("torch is not installed: our rows only (pip install torch for the comparison)",
            file=sys.stderr)
    else:
      torch_zoo = helpers.load_script("torch_zoo")
  threads = [int(t) for t in args.torch_threads.split(",") if t] if torch_zoo else []
  variants = [v for v in args.variants.split(",") if v]
  ours = {}
  for v in variants:
    run, state, resolved = make_ours(v, args.models, args.steps)
    ours[v] = [run, state, resolved]
  info = {"device": str(jax.devices()[0].device_kind), "cpu": results.cpu_model(),
          "jax": jax.__version__, "models": args.models, "batch": BATCH, "steps": args.steps,
          "image_size": SIZE, "width": WIDTH}
  sink = open(args.out, "a") if args.out else None
  rows = []

  def emit(row):
    row = {**row, **info}
    rows.append(row)
    print(json.dumps(row), flush=True)
    if sink:
      sink.write(json.dumps(row) + "\n")

  for rnd in range(args.rounds):
    for t in threads:
      emit({"round": rnd, "row": f"torch_threads{t or 'default'}",
            "images_per_s": round(torch_rate(torch_zoo, t, args.steps, args.repeats))})
    for v in variants:
      rate, ours[v][1] = ours_rate(ours[v][0], ours[v][1], args.models, args.steps,
                                   args.repeats)
      emit({"round": rnd, "row": f"ours_{v}", "resolved": ours[v][2],
            "images_per_s": round(rate)})
  by_row = {}
  for r in rows:
    by_row.setdefault(r["row"], {})[r["round"]] = r["images_per_s"]
  summary = {"summary": True,
             "median_images_per_s": {k: statistics.median(v.values())
                                     for k, v in by_row.items()}}
  for v in variants:
    for t in threads:
      torch_row = by_row[f"torch_threads{t or 'default'}"]
      summary[f"ours_{v}/torch_threads{t or 'default'}"] = [
          round(by_row[f"ours_{v}"][k] / torch_row[k], 2) for k in sorted(torch_row)]
  print(json.dumps(summary), flush=True)
  if sink:
    sink.write(json.dumps(summary) + "\n")
    sink.close()


if __name__ == "__main__":
  main()
