"""inversion_maml: MAML on pseudo episodes made of images inverted from the zoo (images).

Data-free meta-learning for image zoos in two phases, neither reading the zoo tasks' data:

1. Model inversion (dfl2l_jax/inversion.py): every zoo model synthesises
   `inversion.images_per_class` images of each of its R classes from its parameters
   and BatchNorm population statistics (DeepInversion). Checkpointed under
   workdir/fusion/inversion; a grid of the images is written to
   workdir/inversion_grid.png, and how each model classifies its own images is logged
   and saved in workdir/fusion/inversion/summary.json.
2. MAML (second order, `inversion_maml.first_order` for first order) with the settings
   of `config.maml`, on pseudo episodes: one zoo model's R classes, its labels permuted
   by one of `inversion_maml.label_perms` fixed random permutations per model (so no
   class keeps one output unit), support and query batches drawn from that model's
   synthetic images. Starts from the zoo's average (`start = "va"`) or the benchmark's
   random initialisation (`"random"`).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax import inversion
from dfl2l_jax import loops
from dfl2l_jax import maml as maml_lib
from dfl2l_jax import metrics
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import base
from dfl2l_jax.methods import maml as maml_methods

GRID_MODELS, GRID_IMAGES = 8, 10   # the picture: up to 8 models x 10 images


def hparams(config) -> inversion.InversionHParams:
  ic = config.inversion
  return inversion.InversionHParams(
      images_per_class=int(ic.images_per_class), lr=float(ic.lr),
      bn_weight=float(ic.bn_weight), tv_weight=float(ic.tv_weight),
      l2_weight=float(ic.l2_weight), jitter=int(ic.jitter), flip=bool(ic.flip))


def invert_zoo(ctx: base.MethodContext):
  """Every zoo model's inverted images, (N, R * P, H, W, C) in the network's input space.

  Resumes from (or reuses) workdir/fusion/inversion; shared by every method that uses
  inverted images, since it depends only on the zoo and config.inversion.
  """
  bench = ctx.benchmark
  if bench.metric != "accuracy" or "ways" not in bench.spec:
    raise NotApplicable("model inversion synthesises images for a classifier zoo; a "
                        "regression zoo is queried at inputs of its domain (zoo_maml)")
  if ctx.zoo_bn_stats is None:
    raise ConfigError(
        "model inversion needs the zoo's BatchNorm population statistics, and this zoo has "
        "none (a network without BatchNorm, or a context built without them: methods "
        "that invert declare needs_bn_stats=True)")
  ways, hp = int(bench.spec["ways"]), hparams(ctx.config)
  n = inversion.zoo_size(ctx.zoo)
  chunk, optimizer = inversion.make_chunk(bench.model, ways, hp)
  images = inversion.init_images(jax.random.fold_in(ctx.key, 0), n, ways, hp,
                                 bench.example_input.shape[1:])
  state = inversion.InversionState(images, optimizer.init(images), jnp.int32(0))
  zoo, stats = jax.device_put(ctx.zoo), jax.device_put(ctx.zoo_bn_stats)
  ids = jnp.arange(n)
  key = jax.random.fold_in(jax.random.key(ctx.config.seed), 0x1A7E)  # not method-specific
  ic = ctx.config.inversion
  spec = {"method": "inversion", "inversion": ic.to_dict(), "seed": ctx.config.seed,
          "benchmark": bench.spec, "zoo": ctx.config.zoo.to_dict()}
  ckpt = ctx.checkpointer("inversion", spec)
  try:
    state = loops.run_chunked(
        name="inversion", state=state, total_steps=int(ic.steps),
        chunk_steps=int(ic.chunk_steps), checkpointer=ckpt, writer=ctx.writer,
        hooks=ctx.hooks,
        run_chunk=lambda st, start, length: chunk(st, zoo, stats, ids, key, length=length))
  finally:
    if ckpt is not None:
      ckpt.close()
  images = state.images
  if not bool(jnp.isfinite(images).all()):
    raise loops.DivergenceError(
        f"inversion: the images became non-finite by step {int(state.step)}; lower "
        "config.inversion.lr")
  acc = inversion.own_accuracy(bench.model, zoo, stats, images, ways, hp.images_per_class)
  metrics.log.info("inversion: the zoo classifies its own inverted images %.1f%% correctly "
                   "(mean over %d models; min %.1f%%)", acc.mean(), n, acc.min())
  if ctx.workdir is not None:
    _write_outputs(ctx.workdir, images, acc, ways, hp.images_per_class)
  return images


def _write_outputs(workdir, images, acc, ways, per_class):
  """workdir/inversion_grid.png and fusion/inversion/summary.json (process 0)."""
  if jax.process_index() != 0:
    return
  host = np.asarray(images)
  n = host.shape[0]
  # Per model: up to GRID_IMAGES images, spread over its classes.
  per_row = min(GRID_IMAGES, ways * per_class)
  cols = [(j % ways) * per_class + (j // ways) % per_class for j in range(per_row)]
  picture = inversion.grid(inversion.to_uint8(host[:GRID_MODELS][:, cols]),
                           min(n, GRID_MODELS), per_row)
  inversion.write_png(os.path.join(workdir, "inversion_grid.png"), picture)
  checkpointing.write_json_atomic(
      os.path.join(workdir, "fusion", "inversion", "summary.json"),
      {"own_accuracy_mean": float(acc.mean()), "own_accuracy_min": float(acc.min()),
       "own_accuracy_per_model": [float(a) for a in acc],
       "grid": "inversion_grid.png: rows are zoo models, columns images of classes "
               "0, 1, ..., R-1, 0, ... (each image min-max scaled)"})


def label_permutations(seed, num_models, ways, count):
  """(N * count, R) permutations and (N * count,) model index: the pseudo-task table."""
  rng = np.random.default_rng([seed, 0x1A7E])
  perms = np.stack([rng.permutation(ways) for _ in range(num_models * count)])
  return np.repeat(np.arange(num_models), count).astype(np.int32), perms.astype(np.int32)


@functools.lru_cache(maxsize=8)
def pseudo_episode_batch_fn(ways, per_class, batch_size):
  """A `batch_fn` over pseudo tasks {"model", "perm"}: `batch_size` of the model's
  inverted images (data: (N, R * P, H, W, C)), classes drawn uniformly, labels permuted."""

  def batch_fn(task, key, data):
    k_cls, k_pos = jax.random.split(key)
    cls = jax.random.randint(k_cls, (batch_size,), 0, ways)
    pos = jax.random.randint(k_pos, (batch_size,), 0, per_class)
    return {"x": data[task["model"], cls * per_class + pos], "y": task["perm"][cls]}
  return batch_fn


def inversion_maml(ctx: base.MethodContext, name="inversion_maml"):
  images = invert_zoo(ctx)
  mc, ic = ctx.config.maml, ctx.config.inversion_maml
  ways, per_class = int(ctx.benchmark.spec["ways"]), int(ctx.config.inversion.images_per_class)
  n = inversion.zoo_size(ctx.zoo)
  models, perms = label_permutations(ctx.config.seed, n, ways, int(ic.label_perms))
  tasks = jax.device_put({"model": models, "perm": perms})
  batch_fn = pseudo_episode_batch_fn(ways, per_class, int(ctx.config.zoo.batch_size))
  hp = maml_methods.hparams(mc, bool(ic.first_order), "vmap")
  chunk = maml_methods._chunk(batch_fn, ctx.benchmark.loss_fn, float(mc.outer_lr), hp,  # pylint: disable=protected-access
                              maml_lib.UniformTasks(len(models), mc.meta_batch_size))
  start = jax.tree.map(lambda x: x.mean(0), ctx.zoo) if ic.start == "va" else None
  spec = dict(maml_methods._spec_common(ctx, name, len(models), bool(ic.first_order)),  # pylint: disable=protected-access
              inversion=ctx.config.inversion.to_dict(), inversion_maml=ic.to_dict(),
              benchmark=ctx.benchmark.spec)
  return maml_methods._run(ctx, name, spec, mc.meta_steps, chunk,  # pylint: disable=protected-access
                           lambda start_, length: tasks, start=start, data=images).params


def validate_inversion(config):
  if "inversion" not in config:
    raise ConfigError("config has no inversion section (configs/common.py: inversion())")
  ic = config.inversion
  for field in ("steps", "chunk_steps", "images_per_class"):
    maml_methods._check_positive_int(config, "inversion", field)  # pylint: disable=protected-access
  maml_methods._check_positive_real(config, "inversion", "lr")  # pylint: disable=protected-access
  if not maml_methods._is_int(ic.jitter) or ic.jitter < 0:  # pylint: disable=protected-access
    raise ConfigError(f"config.inversion.jitter must be an int >= 0, got {ic.jitter!r}")
  for field in ("bn_weight", "tv_weight", "l2_weight"):
    v = ic[field]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
      raise ConfigError(f"config.inversion.{field} must be a non-negative finite number, "
                        f"got {v!r}")
  if not isinstance(ic.flip, bool):
    raise ConfigError(f"config.inversion.flip must be true or false, got {ic.flip!r}")


def validate(config):
  maml_methods.validate_maml(config)
  validate_inversion(config)
  if "inversion_maml" not in config:
    raise ConfigError("config has no inversion_maml section (configs/common.py: "
                      "inversion_maml())")
  ic = config.inversion_maml
  if ic.start not in ("va", "random"):
    raise ConfigError(f"config.inversion_maml.start must be 'va' or 'random', got {ic.start!r}")
  if not isinstance(ic.first_order, bool):
    raise ConfigError(f"config.inversion_maml.first_order must be true or false, got "
                      f"{ic.first_order!r}")
  maml_methods._check_positive_int(config, "inversion_maml", "label_perms")  # pylint: disable=protected-access


INVERSION_MAML = base.Method(
    "inversion_maml", (), inversion_maml,
    "MAML on pseudo episodes of images inverted from the zoo (DeepInversion; data-free; "
    "images)", validate, needs_bn_stats=True)
