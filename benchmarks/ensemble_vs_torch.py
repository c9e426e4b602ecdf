r"""Our Conv4-16 ensemble trainer step beside the PyTorch and plain-JAX yardsticks, in one run.

  python -m benchmarks.ensemble_vs_torch --bench-dir DIR --small  # 10 models x 32, 32x32 (CPU)
  python -m benchmarks.ensemble_vs_torch --bench-dir DIR   # 100 models x 64, 32x32 and 84x84
  python -m benchmarks.ensemble_vs_torch --bench-dir DIR --rounds 3 \
      --variants like:patches:reshape:map,real:auto --out /tmp/rows.jsonl
  python -m benchmarks.ensemble_vs_torch --small --no-torch --no-naive   # ours only

Run from the repository root (it imports tests/helpers.py). The earlier default set
of eight GPU variants at 32x32 and 84x84 took about 2.5 minutes on an H200,
compiles included (numbers: results/performance.md); today's six are not yet timed
on a GPU.

The yardsticks are not part of the project: `--bench-dir DIR` (or the environment
variable DFL2L_BENCH_DIR) names a folder holding the two yardstick scripts,
`torch_ensemble_step.py` and `jax_naive_ensemble_step.py`; it is required unless
both `--no-torch` and `--no-naive` are given. (benchmarks/gpu_session.sh passes the
ignored folder `.yardsticks/` of the checkout, which is carried to the device.)
`torch_ensemble_step.py` runs as a subprocess (a Python loop over
the models and torch.func vmap; on CPU also with OMP_NUM_THREADS=1, since a
2-thread OpenMP pool collapses on a shared machine); `jax_naive_ensemble_step.py`
is imported and its `bench(n_models, batch, hw, steps)` called.

Our variants, `kind:conv:pool:loop[:precision]`:
  like:folded[:pool]  the same, all members in one program without vmap: models
        folded into the channels, one grouped convolution per layer.
  like  the yardsticks' step, like for like: Conv4-16 WITHOUT BatchNorm
        (models.Conv4(bn=False)), plain SGD lr 0.05, one fixed random batch per
        member, run by ensemble.make_ensemble_chunk.
  likebn  `like` with BatchNorm from batch statistics (where the time goes).
  likebnfused, realfused  `likebn` and `real` with models.FusedBatchNorm (the
        same function with a hand-written backward pass; `realfused:auto` is
        `real:auto` with config.model.bn_impl = "fused").
  real  the zoo trainer's step: Conv4-16 with BatchNorm from batch statistics,
        Adam, each member's batch gathered and normalised from the image array
        by fewshot's batch_fn (synthetic images). `real:auto` is exactly the
        benchmark's own loss with the levers resolve_backend_choices picks.
  conv  xla | patches (models.Conv4.conv_impl); pool reshape | window
        (models.max_pool_2x2); loop vmap | map (ensemble.make_ensemble_chunk);
  precision  optional jax.default_matmul_precision (default | high | highest).
All fp32. Steps run inside one `lax.scan` chunk (as the trainer runs them);
compile excluded, best of `--repeats`. Prints one JSON line per measurement and
a summary with images/s and ratios to torch.func vmap and to plain JAX vmap
(medians over `--rounds`, which interleave all rows).
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

from dfl2l_jax import ensemble
from dfl2l_jax import models
from dfl2l_jax import optimizers
from dfl2l_jax import results
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.tasks import fewshot
from tests import helpers

CPU_VARIANTS = ("like:xla:window:vmap", "like:patches:window:map", "like:patches:reshape:vmap",
                "like:patches:reshape:map", "real:patches:window:map", "real:auto")
# The levers already measured on an H200 (results/performance.md) are out of the default
# set to keep one device call short: like:xla:reshape:vmap, like:folded:reshape,
# like:xla:reshape:vmap:highest, real:xla:window:vmap (name them in --variants to rerun).
GPU_VARIANTS = ("like:xla:window:vmap", "like:patches:reshape:vmap",
                "likebn:patches:reshape:vmap", "likebnfused:patches:reshape:vmap",
                "real:auto", "realfused:auto")


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _time_chunk(run, state, repeats):
  state = run(state)  # compile
  jax.block_until_ready(state)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    state = run(state)
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - t)
  return best


def _like_parts(conv, pool, n, batch, hw, bn=False, bn_impl="flax"):
  """The yardstick's step: no BatchNorm, SGD 0.05, one fixed batch per member."""
  net = models.Conv4(ways=5, filters=16, conv_impl=conv, pool_impl=pool, bn=bn, bn_impl=bn_impl)
  params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, hw, hw, 3)))["params"])(
      jax.random.split(jax.random.key(0), n))
  tasks = {"x": jax.random.normal(jax.random.key(1), (n, batch, hw, hw, 3)),
           "y": jax.random.randint(jax.random.key(2), (n, batch), 0, 5)}

  def loss_fn(p, b):
    logits = models.apply_train_mode(net, p, b["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

  return loss_fn, lambda task, key, data: task, optax.sgd(0.05), params, tasks, None, None


def measure_folded(n, batch, hw, steps, repeats, pool="reshape"):
  """Like-for-like step with the models folded into the channels, no vmap.

  Activations of all members live in one (batch, H, W, models * channels)
  array; each 3x3 convolution is ONE grouped convolution
  (feature_group_count = models), so no layer moves the model axis around.
  The gradient of the summed member losses is each member's own gradient
  (members share nothing), so one SGD step on it is the ensemble's step.
  """
  from jax import lax  # pylint: disable=g-import-not-at-top
  loss1, _, _, params, tasks, _, _ = _like_parts("xla", pool, n, batch, hw)
  del loss1
  x = jnp.moveaxis(tasks["x"], 0, 3).reshape(batch, hw, hw, n * 3)

  def loss_fn(p, x, y):
    for i in range(4):
      k, b = p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"]
      c_in, c_out = k.shape[-2], k.shape[-1]
      kk = jnp.transpose(k, (1, 2, 3, 0, 4)).reshape(3, 3, c_in, n * c_out)
      x = lax.conv_general_dilated(x, kk, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=n) + b.reshape(-1)
      x = models.max_pool_2x2(jax.nn.relu(x), pool)
    h, w = x.shape[1], x.shape[2]
    x = x.reshape(batch, h, w, n, -1)
    dense = p["Dense_0"]
    wk = dense["kernel"].reshape(n, h, w, x.shape[-1], -1)
    logits = jnp.einsum("bhwmc,mhwck->mbk", x, wk) + dense["bias"][:, None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(-1).sum()

  @jax.jit
  def run(p):
    def body(p, _):
      g = jax.grad(loss_fn)(p, x, tasks["y"])
      return jax.tree.map(lambda a, b: a - 0.05 * b, p, g), None
    return jax.lax.scan(body, p, None, length=steps)[0]

  dt = _time_chunk(run, params, repeats)
  return {"side": "ours", "variant": f"like:folded:{pool}:none", "kind": "like",
          "conv": "folded", "pool": pool, "loop": "none", "precision": "default",
          "n_models": n, "batch": batch, "hw": hw, "step_ms": round(dt / steps * 1e3, 3),
          "images_per_s": round(n * batch * steps / dt)}


def _real_parts(conv, pool, n, batch, hw, bn_impl="flax"):
  """The zoo trainer's step (BatchNorm, Adam, batches gathered from images)."""
  config = helpers.fewshot_config(zoo__num_models=n, zoo__batch_size=batch, zoo__ways=5,
                                  model__bn_impl=bn_impl)
  bench = fewshot.make_benchmark(config, helpers.synthetic_image_loader(per_class=40,
                                                                          size=hw))
  if conv == "auto":
    loss_fn = bench.loss_fn
  else:
    net = models.Conv4(ways=5, filters=16, conv_impl=conv, pool_impl=pool, bn_impl=bn_impl)

    def loss_fn(p, b):
      return fewshot.cross_entropy(models.apply_train_mode(net, p, b["x"]), b["y"])

  optimizer = optimizers.make(config.zoo.optimizer, config.zoo.lr)
  return (loss_fn, bench.batch_fn, optimizer, zoo_lib.initial_params(config, bench),
          jax.tree.map(jnp.asarray, bench.zoo_tasks), bench.data,
          (bench.model.conv_impl, bench.model.pool_impl, bench.member_loop))


def measure_ours(spec, n, batch, hw, steps, repeats):
  parts = spec.split(":")
  kind = parts[0]
  if kind == "like" and parts[1:2] == ["folded"]:
    return measure_folded(n, batch, hw, steps, repeats, *parts[2:3])
  if kind in ("real", "realfused") and parts[1:2] == ["auto"]:
    conv = pool = loop = "auto"
    precision = parts[2] if len(parts) > 2 else None
  else:
    if len(parts) not in (4, 5) or kind not in ("like", "likebn", "likebnfused", "real",
                                                 "realfused"):
      raise ValueError(f"variant must be kind:conv:pool:loop[:precision], got {spec!r}")
    conv, pool, loop = parts[1:4]
    precision = parts[4] if len(parts) > 4 else None
  make = {"like": _like_parts, "real": _real_parts,
          "realfused": lambda *a: _real_parts(*a, bn_impl="fused"),
          "likebn": lambda *a: _like_parts(*a, bn=True),
          "likebnfused": lambda *a: _like_parts(*a, bn=True, bn_impl="fused")}[kind]
  loss_fn, batch_fn, opt, params, tasks, data, resolved = make(conv, pool, n, batch, hw)
  if resolved is not None and conv == "auto":
    conv, pool, loop = resolved
  keys = jax.random.split(jax.random.key(3), n)
  chunk = ensemble.make_ensemble_chunk(ensemble.make_member_step(loss_fn, opt), batch_fn, loop)
  with jax.default_matmul_precision(precision or "default"):
    run = lambda st: chunk(st, tasks, keys, data, length=steps)[0]
    dt = _time_chunk(run, ensemble.init_ensemble(params, opt), repeats)
  return {"side": "ours", "variant": spec, "kind": kind, "conv": conv, "pool": pool,
          "loop": loop, "precision": precision or "default", "n_models": n, "batch": batch,
          "hw": hw, "step_ms": round(dt / steps * 1e3, 3),
          "images_per_s": round(n * batch * steps / dt)}


def run_torch(bench_dir, small, threads):
  """Rows of torch_ensemble_step.py (subprocess; `threads` sets OMP_NUM_THREADS)."""
  env = dict(os.environ)
  if threads:
    env["OMP_NUM_THREADS"] = str(threads)
  cmd = [sys.executable, os.path.join(bench_dir, "torch_ensemble_step.py")]
  out = subprocess.run(cmd + (["small"] if small else []), env=env, capture_output=True,
                       text=True, timeout=900, check=False)
  rows = []
  for line in out.stdout.splitlines():
    if line.startswith("{"):
      row = json.loads(line)
      rows.append({"side": "torch", "variant": f"torch_{row['mode']}"
                   + (f"_threads{threads}" if threads else ""), **row})
  if not rows:
    raise RuntimeError(f"torch yardstick gave no rows: {out.stderr[-2000:]}")
  return rows


def run_naive(bench_dir, n, batch, hw, steps):
  spec = importlib.util.spec_from_file_location(
      "jax_naive_ensemble_step", os.path.join(bench_dir, "jax_naive_ensemble_step.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return {"side": "jax_naive", "variant": "jax_naive_vmap", **mod.bench(n, batch, hw, steps)}


def summarize(rows):
  """Median images/s per (config, variant) and ratios to torch.func / plain JAX vmap."""
  groups = {}
  for r in rows:
    groups.setdefault((r["n_models"], r["batch"], r["hw"]), {}).setdefault(
        r["variant"], []).append(r["images_per_s"])
  out = []
  for (n, b, hw), by_variant in sorted(groups.items()):
    med = {v: statistics.median(x) for v, x in by_variant.items()}
    tf, jn = med.get("torch_vmap"), med.get("jax_naive_vmap")
    for v, ips in med.items():
      out.append({"summary": True, "n_models": n, "batch": b, "hw": hw, "variant": v,
                  "images_per_s_median": round(ips), "runs": len(by_variant[v]),
                  "vs_torch_func_vmap": round(ips / tf, 2) if tf else None,
                  "vs_jax_naive_vmap": round(ips / jn, 2) if jn else None})
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true",
                      help="10 models x 32 at 32x32 (the yardsticks' `small`)")
  parser.add_argument("--bench-dir", default=os.environ.get("DFL2L_BENCH_DIR", ""), metavar="DIR",
                      help="folder holding the yardstick scripts torch_ensemble_step.py and "
                           "jax_naive_ensemble_step.py (default: $DFL2L_BENCH_DIR); needed "
                           "unless --no-torch and --no-naive")
  parser.add_argument("--variants", default="",
                      help="comma-separated kind:conv:pool:loop[:precision]; default per backend")
  parser.add_argument("--steps", type=int, default=0, help="steps per timed chunk")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--no-naive", action="store_true")
  parser.add_argument("--torch-threads", default="",
                      help="comma list of OMP_NUM_THREADS for extra torch runs; "
                           "default '1' on CPU, none elsewhere")
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = parser.parse_args()
  if not (args.no_torch and args.no_naive):
    if not args.bench_dir:
      parser.error("the yardsticks need --bench-dir DIR (or DFL2L_BENCH_DIR): a folder holding "
                   "torch_ensemble_step.py and jax_naive_ensemble_step.py; or pass --no-torch "
                   "--no-naive to time ours only")
    if not os.path.isdir(args.bench_dir):
      parser.error(f"--bench-dir {args.bench_dir} is not a folder")
  on_cpu = jax.default_backend() == "cpu"
  variants = [v for v in args.variants.split(",") if v] or list(
      CPU_VARIANTS if on_cpu else GPU_VARIANTS)
  configs = [(10, 32, 32)] if args.small else [(100, 64, 32), (100, 64, 84)]
  steps = args.steps or (3 if args.small else 10)
  threads = [None] + [int(t) for t in (args.torch_threads or ("1" if on_cpu else "")).split(",")
                      if t]
  info = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "cpu": results.cpu_model(), "jax": jax.__version__}
  sink = open(args.out, "a") if args.out else None
  rows = []

  def emit(row):
    row = {**row, **info, "date": _now()}
    rows.append(row)
    print(json.dumps(row), flush=True)
    if sink:
      sink.write(json.dumps(row) + "\n")
      sink.flush()

  for rnd in range(args.rounds):
    if not args.no_torch:
      for t in threads:
        try:
          for row in run_torch(args.bench_dir, args.small, t):
            emit({**row, "round": rnd})
        except Exception as e:  # pylint: disable=broad-except
          print(json.dumps({"error": f"torch threads={t}: {e!r}"[:3000]}), flush=True)
    for n, b, hw in configs:
      if not args.no_naive:
        try:
          emit({**run_naive(args.bench_dir, n, b, hw, steps if args.small else 20), "round": rnd})
        except Exception as e:  # pylint: disable=broad-except
          print(json.dumps({"error": f"jax naive {hw}: {e!r}"[:3000]}), flush=True)
      for v in variants:
        try:
          emit({**measure_ours(v, n, b, hw, steps, args.repeats), "round": rnd})
        except Exception as e:  # pylint: disable=broad-except
          print(json.dumps({"error": f"{v} @{hw}: {e!r}"[:3000]}), flush=True)
  for row in summarize(rows):
    print(json.dumps(row), flush=True)
    if sink:
      sink.write(json.dumps(row) + "\n")
  if sink:
    sink.close()


if __name__ == "__main__":
  main()
