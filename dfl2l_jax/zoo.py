"""The model zoo: training it with the ensemble trainer, splitting and checking it."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl2l_jax import checkpointing
from dfl2l_jax import config_lib
from dfl2l_jax import ensemble
from dfl2l_jax import loops
from dfl2l_jax.errors import ZooError


def make_optimizer(zc):
  return optax.adam(zc.lr) if zc.optimizer == "adam" else optax.sgd(zc.lr)


def zoo_spec(config, benchmark):
  """What determines the zoo: a workdir whose zoo differs in any of it is rejected."""
  return {"benchmark": benchmark.spec, "zoo": config.zoo.to_dict(), "seed": config.seed}


def initial_params(config, benchmark):
  """Stacked initial parameters of the N zoo models.

  With `zoo.shared_init` every model starts from one random initialisation
  (see docs/method.md for why that is the default); otherwise each model has
  its own.
  """
  n = config.zoo.num_models
  key = jax.random.fold_in(jax.random.key(config.seed), 10)
  if config.zoo.shared_init:
    p0 = benchmark.init_params(key)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), p0)
  return jax.vmap(benchmark.init_params)(jax.random.split(key, n))


def member_keys(config):
  return jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 11),
                          config.zoo.num_models)


def train_zoo(config, benchmark, workdir=None, writer=None, hooks=None):
  """Trains (or resumes, or loads) the zoo; returns params with a leading model axis."""
  zc = config.zoo
  optimizer = make_optimizer(zc)
  ckpt = None
  if workdir is not None:
    directory = os.path.join(workdir, "zoo")
    spec = zoo_spec(config, benchmark)
    checkpointing.check_spec(directory, spec, "zoo")
    checkpointing.write_spec(directory, spec)
    ckpt = checkpointing.Checkpointer(directory)
  chunk = ensemble.make_ensemble_chunk(
      ensemble.make_member_step(benchmark.loss_fn, optimizer), benchmark.batch_fn,
      benchmark.member_loop)
  tasks = jax.tree.map(jnp.asarray, benchmark.zoo_tasks)
  keys = member_keys(config)
  state = ensemble.init_ensemble(initial_params(config, benchmark), optimizer)
  try:
    state = loops.run_chunked(
        name="zoo", state=state, total_steps=zc.steps, chunk_steps=zc.chunk_steps,
        checkpointer=ckpt, writer=writer, hooks=hooks,
        run_chunk=lambda st, start, length: chunk(st, tasks, keys, benchmark.data,
                                                 length=length),
        summarize=lambda losses: {"loss_mean": losses[-1].mean(),
                                  "loss_max": losses[-1].max()})
  finally:
    if ckpt is not None:
      ckpt.close()
  check_finite(state.params)
  return state.params


def check_finite(zoo):
  """Raises ZooError naming the first model and parameter holding NaN or Inf."""
  flat, _ = jax.tree_util.tree_flatten_with_path(zoo)
  for path, leaf in flat:
    leaf = np.asarray(leaf)
    bad = ~np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
    if bad.any():
      models = np.flatnonzero(bad)
      raise ZooError(
          f"zoo model {int(models[0])} (of {len(models)} bad models) has NaN/Inf in "
          f"parameter {jax.tree_util.keystr(path)}; retrain or drop it")


def zoo_quality(zoo, benchmark):
  """Each zoo model's metric on its own task's held-out data: mean, min, max."""
  tasks = jax.tree.map(jnp.asarray, benchmark.zoo_tasks)
  # One model after another (lax.map): evaluating all models at once would hold every
  # model's activations for its whole test set (tens of GB for 100 Conv4 models at 84x84).
  evaluate = jax.jit(lambda z, t, d: jax.lax.map(
      lambda a: benchmark.zoo_eval_fn(a[0], a[1], d), (z, t)))
  values = np.asarray(evaluate(zoo, tasks, benchmark.data), np.float64)
  return {"metric": benchmark.metric, "mean": float(values.mean()),
          "min": float(values.min()), "max": float(values.max()),
          "per_model": [float(v) for v in values]}


def split(config):
  """Returns (s_idx, q_idx), indices into the zoo.

  Q is a random subset of |Q| = round(val_fraction * N) models (sorted); S holds
  the rest in random order, which is also the arrival order of the online
  setting.
  """
  perm = np.random.default_rng([config.seed, 2]).permutation(config.zoo.num_models)
  n_q = config_lib.num_validation(config)
  return perm[n_q:], np.sort(perm[:n_q])
