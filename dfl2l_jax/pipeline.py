"""The end-to-end pipelines behind the launchers.

`run(config, workdir, setting)`: train (or load) the zoo, produce each method's
initialisation, meta-test it at every shot count, write results. Every phase
checkpoints under `workdir`, so the same call after a kill resumes and ends
with the same results. `evaluate` meta-tests saved initialisations again.

Layout of a workdir:
  zoo/            orbax checkpoints of the ensemble trainer, spec.json
  fusion/<name>/  fusion state checkpoints of meta-trained methods, spec.json
  inits/<name>/   each method's theta_init
  metrics.jsonl   one JSON line per chunk of every phase
  results.json, results.md   written last, atomically
"""

import os
import time
import zlib

import jax
import numpy as np

from dfl2l_jax import adaptation
from dfl2l_jax import checkpointing
from dfl2l_jax import config_lib
from dfl2l_jax import methods as methods_lib
from dfl2l_jax import metrics
from dfl2l_jax import results as results_lib
from dfl2l_jax import sharding
from dfl2l_jax import tasks
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import CheckpointError, NotApplicable, ZooError

log = metrics.log


def prepare(config, workdir=None, chosen=()):
  """Validates the config (and the sections of the `chosen` methods) and builds the benchmark."""
  sharding.initialize_distributed(config)  # before anything touches the devices.
  config_lib.validate(config)
  for method in chosen:
    if method.validate is not None:
      method.validate(config)
  benchmark = tasks.get_benchmark(config)
  config_lib.validate_shots(config, benchmark)
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
  return benchmark


def pretrain(config, workdir, hooks=None):
  """Trains the zoo into workdir/zoo; returns (zoo, quality)."""
  benchmark = prepare(config, workdir)
  writer = metrics.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
  zoo = zoo_lib.train_zoo(config, benchmark, workdir, writer, hooks)
  quality = zoo_lib.zoo_quality(zoo, benchmark)
  log.info("zoo quality (%s on own task): mean %.4f min %.4f max %.4f",
               quality["metric"], quality["mean"], quality["min"], quality["max"])
  return zoo, quality


def method_key(config, name):
  return jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def meta_test_rows(config, benchmark, name, theta_init, episodes):
  rows = []
  mt = config.metatest
  for shots, eps in episodes.items():
    per_task = adaptation.meta_test(
        theta_init, eps, loss_fn=benchmark.loss_fn, metric_fn=benchmark.metric_fn,
        steps=mt.steps, lr=mt.lr, batch_size=mt.batch_size,
        gather_fn=benchmark.gather_episode, data=benchmark.data,
        mesh=sharding.make_mesh(config, sharding.TASKS))
    if not np.all(np.isfinite(per_task)):
      log.warning("%s at %d shots: %d of %d tasks have a non-finite metric", name,
                      shots, int((~np.isfinite(per_task)).sum()), per_task.size)
    mean, ci = adaptation.mean_ci95(per_task)
    log.info("%s %d-shot: %s %.4f +- %.4f", name, shots, benchmark.metric, mean, ci)
    rows.append(results_lib.row(name, shots, mean, ci, per_task))
  return rows


def _finish(config, workdir, benchmark, setting, rows, quality, t0, s_idx, q_idx):
  out = {"benchmark": benchmark.name, "metric": benchmark.metric, "seed": config.seed,
         "setting": setting, "config": config.to_dict(), "rows": rows,
         "zoo_quality": quality, "split": {"n_s": len(s_idx), "n_q": len(q_idx)},
         "wall_seconds": time.perf_counter() - t0, "versions": results_lib.versions()}
  results_lib.write(workdir, out)
  log.info("wrote %s", os.path.join(workdir, "results.json"))
  return out


def run(config, workdir, setting="offline", hooks=None):
  """The whole pipeline for the launchers `offline` and `online`.

  Args:
    config: a run config (see configs/).
    workdir: run directory; created if needed, resumed if it holds a run.
    setting: "offline" or "online": picks the default methods when
      `config.methods` is empty.
    hooks: optional `hooks(phase, step)` called after every checkpointed chunk.

  Returns:
    The results dict also written to workdir/results.json.
  """
  t0 = time.perf_counter()
  chosen = methods_lib.resolve(config.methods, setting)
  benchmark = prepare(config, workdir, chosen)  # starts jax.distributed, validates.
  results_lib.clear(workdir)
  writer = metrics.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
  zoo = zoo_lib.train_zoo(config, benchmark, workdir, writer, hooks)
  quality = zoo_lib.zoo_quality(zoo, benchmark)
  s_idx, q_idx = zoo_lib.split(config)
  episodes = {s: benchmark.make_episodes(s) for s in config.shots}
  rows = []
  for method in chosen:
    ctx = methods_lib.MethodContext(
        config=config, benchmark=benchmark, zoo=zoo, s_idx=s_idx, q_idx=q_idx,
        key=method_key(config, method.name), workdir=workdir, writer=writer, hooks=hooks)
    try:
      theta_init = method.make_init(ctx)
    except NotApplicable as e:
      log.warning("%s is not applicable here: %s", method.name, e)
      rows += [results_lib.na_row(method.name, shots, str(e)) for shots in config.shots]
      continue
    try:
      zoo_lib.check_finite(jax.tree.map(lambda x: x[None], theta_init))
    except ZooError as e:
      raise ZooError(f"method {method.name} produced a non-finite initialisation: {e}")
    checkpointing.save_tree(os.path.join(workdir, "inits", method.name), theta_init)
    rows += meta_test_rows(config, benchmark, method.name, theta_init, episodes)
  return _finish(config, workdir, benchmark, setting, rows, quality, t0, s_idx, q_idx)


def evaluate(config, workdir):
  """Meta-tests every initialisation saved in workdir/inits again.

  The zoo must match the config (it is checked, not retrained); the meta-test
  settings (shots, steps, lr, tasks) may differ from the original run.
  """
  t0 = time.perf_counter()
  benchmark = prepare(config, workdir)
  inits_dir = os.path.join(workdir, "inits")
  zoo_dir = os.path.join(workdir, "zoo")
  if not os.path.isdir(zoo_dir):
    raise CheckpointError(f"{workdir} holds no zoo: run launch.offline or launch.online first")
  with checkpointing.Checkpointer(zoo_dir) as ckpt:
    if ckpt.latest_step() != config.zoo.steps:
      raise CheckpointError(
          f"the zoo in {zoo_dir} is unfinished (step {ckpt.latest_step()} of "
          f"{config.zoo.steps}): finish it with launch.pretrain or launch.offline first")
  names = sorted(os.listdir(inits_dir)) if os.path.isdir(inits_dir) else []
  if config.methods.strip():
    wanted = [m.name for m in methods_lib.resolve(config.methods, "offline")]
    missing = [n for n in wanted if n not in names]
    if missing:
      raise CheckpointError(f"{inits_dir} has no initialisation for {', '.join(missing)}")
    names = wanted
  if not names:
    raise CheckpointError(f"{inits_dir} holds no saved initialisations")
  results_lib.clear(workdir)
  zoo = zoo_lib.train_zoo(config, benchmark, workdir)  # restores the finished zoo.
  quality = zoo_lib.zoo_quality(zoo, benchmark)
  s_idx, q_idx = zoo_lib.split(config)
  template = benchmark.init_params(jax.random.key(0))
  episodes = {s: benchmark.make_episodes(s) for s in config.shots}
  rows = []
  for name in names:
    theta_init = jax.device_put(checkpointing.load_tree(os.path.join(inits_dir, name), template))
    rows += meta_test_rows(config, benchmark, name, theta_init, episodes)
  return _finish(config, workdir, benchmark, "evaluate", rows, quality, t0, s_idx, q_idx)
