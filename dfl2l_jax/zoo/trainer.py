"""The model zoo: training it with the ensemble trainer, splitting and checking it."""

import collections.abc
import os

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax import config_lib
from dfl2l_jax import ensemble
from dfl2l_jax import loops
from dfl2l_jax import optimizers
from dfl2l_jax import sharding as sharding_lib
from dfl2l_jax.errors import ZooError
from dfl2l_jax.zoo import contamination
from dfl2l_jax.zoo import store


def zoo_settings(config):
  """config.zoo as a dict, without `source` (an imported zoo is identified by its
  manifest's digest in benchmark.spec) and without an empty `contamination` or
  `architectures`, so specs of earlier workdirs stay valid."""
  settings = config.zoo.to_dict()
  settings.pop("source", None)
  settings.pop("out_of_domain_dir", None)  # where the data is, as data.manual_dir: not the zoo
  for field in ("contamination", "architectures"):  # added later; "" = as before
    if not settings.get(field, "x"):
      settings.pop(field)
  return settings


def zoo_spec(config, benchmark):
  """What determines the trained zoo: a workdir whose zoo differs in any of it is
  rejected. Of config.zoo.contamination (contamination.py) only the kinds made while
  training are part of it; the others are applied to the trained zoo afterwards, so
  clean and such contaminated runs can share a trained zoo."""
  settings = zoo_settings(config)
  settings.pop("contamination", None)
  if contamination.training_spec(config):
    settings["contamination"] = contamination.training_spec(config)
  return {"benchmark": benchmark.spec, "zoo": settings, "seed": config.seed}


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


def train_zoo(config, benchmark, workdir=None, writer=None, hooks=None, *, mesh):
  """Trains (or resumes, or loads) the zoo; returns params with a leading model axis.

  The N members are split across the devices of `mesh` (the run's models mesh,
  sharding.make_mesh; built by the caller, once per run). When N is not a multiple of
  the device count the model axis is padded with copies of real members (each trains
  on a copy of a real member's task, with that member's key); the padding is cut off
  before checkpoints, losses and the returned zoo, so they hold exactly the N
  real models, equal to training without sharding. The returned zoo keeps the
  model sharding when N is a multiple of the device count and is replicated
  over the mesh otherwise (JAX rejects uneven shardings). With several processes
  it is gathered into numpy on every process (`sharding.to_host`); why:
  docs/implementation.md, "train_zoo".
  """
  zc = config.zoo
  n = zc.num_models
  n_pad = sharding_lib.padded_size(n, sharding_lib.num_shards(mesh))
  optimizer = optimizers.make(zc.optimizer, zc.lr)
  ckpt = None
  if workdir is not None:
    directory = os.path.join(workdir, "zoo")
    spec = zoo_spec(config, benchmark)
    checkpointing.check_spec(directory, spec, "zoo")
    checkpointing.write_spec(directory, spec)
    ckpt = checkpointing.Checkpointer(directory)
  chunk = ensemble.make_ensemble_chunk(
      ensemble.make_member_step(benchmark.loss_fn, optimizer), benchmark.batch_fn,
      benchmark.member_loop, mesh=mesh)
  # Each process places only its own devices' rows (sharding.put_sharded).
  tasks = sharding_lib.put_sharded(sharding_lib.pad_rows(benchmark.zoo_tasks, n_pad), mesh)
  keys = sharding_lib.put_sharded(sharding_lib.pad_rows(member_keys(config), n_pad), mesh)
  data = sharding_lib.put_replicated(benchmark.data, mesh)

  def padded_state(real):
    """EnsembleState of the N real members -> padded and placed on the mesh."""
    return ensemble.put_state(ensemble.EnsembleState(
        params=sharding_lib.pad_rows(real.params, n_pad),
        opt_state=sharding_lib.pad_rows(real.opt_state, n_pad), step=real.step), mesh)

  def real_state(st):
    """The padding cut off: what checkpoints hold, independent of the device count."""
    return ensemble.EnsembleState(params=sharding_lib.unpad_rows(st.params, n),
                                  opt_state=sharding_lib.unpad_rows(st.opt_state, n),
                                  step=st.step)

  state = padded_state(ensemble.init_ensemble(initial_params(config, benchmark), optimizer))
  try:
    state = loops.run_chunked(
        name="zoo", state=state, total_steps=zc.steps, chunk_steps=zc.chunk_steps,
        checkpointer=ckpt, writer=writer, hooks=hooks,
        run_chunk=lambda st, start, length: chunk(st, tasks, keys, data, length=length),
        summarize=lambda losses: {"loss_mean": losses[-1, :n].mean(),
                                  "loss_max": losses[-1, :n].max()},
        to_saved=real_state, from_saved=padded_state)
  finally:
    if ckpt is not None:
      ckpt.close()
  params = real_state(state).params
  check_finite(params)
  if jax.process_count() > 1:
    params = sharding_lib.to_host(params)
  return params


def take(zoo, idx):
  """The models `idx` of `zoo`: a pytree with a leading model axis, or any object whose
  `[idx]` returns those models' pytree (a zoo on disk, streamed by online fusion)."""
  if isinstance(zoo, (collections.abc.Mapping, list, tuple)):
    return jax.tree.map(lambda x: x[idx], zoo)
  if hasattr(zoo, "__getitem__"):
    return zoo[idx]
  raise ZooError(f"a zoo is a parameter pytree or an object with slicing, got "
                 f"{type(zoo).__name__}")


def check_finite(zoo):
  """Raises ZooError naming the first model and parameter holding NaN or Inf."""
  flat, _ = jax.tree_util.tree_flatten_with_path(zoo)
  for path, leaf in flat:
    leaf = sharding_lib.to_host(leaf)
    bad = ~np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
    if bad.any():
      models = np.flatnonzero(bad)
      raise ZooError(
          f"zoo model {int(models[0])} (of {len(models)} bad models) has NaN/Inf in "
          f"parameter {jax.tree_util.keystr(path)}; retrain or drop it")


def _bn_stats_program(benchmark):
  return jax.jit(lambda z, t, d: jax.lax.map(
      lambda a: benchmark.zoo_bn_stats_fn(a[0], a[1], d), (z, t)))


def bn_population_stats(zoo, benchmark):
  """Every zoo model's BatchNorm population statistics, computed from its own training
  data (benchmark.zoo_bn_stats_fn), one model after another; None without BatchNorm.

  A pytree {"BatchNorm_i": {"mean", "var"}} with a leading model axis: the running
  statistics a pretrained CNN checkpoint carries, which model inversion matches.
  """
  if benchmark.zoo_bn_stats_fn is None:
    return None
  tasks = jax.tree.map(jnp.asarray, benchmark.zoo_tasks)
  return sharding_lib.to_host(_bn_stats_program(benchmark)(zoo, tasks, benchmark.data))


def bn_stats(config, benchmark, zoo, workdir=None):
  """The finished zoo's BatchNorm population statistics, saved beside it.

  Computed once from the zoo tasks' data by the zoo's producer (this module), saved in
  workdir/zoo_bn_stats/stats under the zoo's spec, and loaded from there afterwards;
  methods get them through their context, without the data. None for networks without
  BatchNorm. Nothing else reads them: the results of every other method are unchanged.
  """
  if benchmark.zoo_bn_stats_fn is None:
    return None
  if workdir is None:
    return bn_population_stats(zoo, benchmark)
  directory = os.path.join(workdir, "zoo_bn_stats")
  stats_dir = os.path.join(directory, "stats")
  spec = dict(zoo_spec(config, benchmark), zoo_steps=config.zoo.steps)
  checkpointing.check_spec(directory, spec, "zoo's BatchNorm statistics")
  checkpointing.write_spec(directory, spec)
  with checkpointing.Checkpointer(stats_dir, max_to_keep=1) as ckpt:
    complete = ckpt.latest_step() is not None
  if complete:
    shapes = jax.eval_shape(_bn_stats_program(benchmark), zoo,
                            jax.tree.map(jnp.asarray, benchmark.zoo_tasks), benchmark.data)
    stats = checkpointing.load_tree(
        stats_dir, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  else:  # new, or a save that was killed: compute (again)
    stats = bn_population_stats(zoo, benchmark)
    checkpointing.save_tree(stats_dir, stats)
  check_finite(stats)
  return stats


def zoo_quality(zoo, benchmark, running_stats=None):
  """Each zoo model's metric on its own task's held-out data: mean, min, max.

  `running_stats`: the BatchNorm statistics a zoo carries (an imported zoo with batch_norm
  "running"), which its models then use; its "held-out" images are the benchmark's images
  of the model's classes, which may include the images it was trained on.
  """
  tasks = jax.tree.map(jnp.asarray, benchmark.zoo_tasks)
  # One model after another (lax.map), for memory: docs/implementation.md, "zoo_quality".
  if running_stats is None:
    evaluate = jax.jit(lambda z, t, d: jax.lax.map(
        lambda a: benchmark.zoo_eval_fn(a[0], a[1], d), (z, t)))
  else:
    evaluate = jax.jit(lambda z, t, d: jax.lax.map(
        lambda a: benchmark.zoo_eval_fn(a[0][0], a[1], d, a[0][1]), ((z, running_stats), t)))
  values = np.asarray(sharding_lib.to_host(evaluate(zoo, tasks, benchmark.data)), np.float64)
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


def write_zoo_folder(directory, config, benchmark, zoo, quality):
  """The trained zoo as a zoo folder (store.py), so that other runs, other code and
  launch.export read it as they read an imported one: BatchNorm "batch" (our models
  normalise with the statistics of the batch they are given), the benchmark's
  normalisation, each model's classes and its accuracy on its held-out images.

  Image benchmarks only (None otherwise); a folder already written is kept (the workdir's
  zoo spec fixes its content). Returns the folder, or None.
  """
  spec = benchmark.spec
  if "train_classes" not in spec or benchmark.imported_zoo is not None:
    return None
  if os.path.exists(os.path.join(directory, store.MANIFEST)):
    return directory
  arch = {"name": "conv4", "filters": int(spec["filters"]), "ways": int(spec["ways"])}
  entries = [{"classes": [int(c) for c in cls], "accuracy": acc, "source": None}
             for cls, acc in zip(np.asarray(benchmark.zoo_tasks["classes"]),
                                 quality["per_model"])]
  store.write(directory, zoo_manifest(config, benchmark, arch, entries),
              sharding_lib.to_host(zoo))
  return directory


def zoo_manifest(config, benchmark, architecture, entries):
  """The manifest of a zoo our trainer made (BatchNorm "batch": our models normalise with
  the statistics of the batch they are given), its models' `entries` given."""
  spec, data = benchmark.spec, benchmark.data
  return {
      "format": store.FORMAT, "version": store.VERSION, "architecture": architecture,
      "image_size": int(spec["image_shape"][0]), "channel_order": "RGB",
      "normalization": {"mean": [float(v) for v in np.asarray(data["mean"])],
                        "std": [float(v) for v in np.asarray(data["std"])]},
      "batch_norm": "batch", "class_names": list(spec["train_classes"]), "models": entries,
      "producer": {"name": "dfl2l_jax.zoo.trainer", "benchmark": benchmark.name,
                   "seed": int(config.seed), "zoo": zoo_spec(config, benchmark)["zoo"],
                   "accuracy": "on each model's held-out images of its classes"}}
