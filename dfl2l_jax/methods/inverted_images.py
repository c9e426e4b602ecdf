"""The zoo's inverted images, shared by the methods that learn from them.

Model inversion (dfl2l_jax/inversion.py, DeepInversion) of every zoo model, run once per
workdir and reused: `inversion_maml` builds pseudo episodes from the images, `zoo_distill`
uses them as pseudo-inputs on which the zoo's outputs are distillation targets. Neither
reads the zoo tasks' data: the zoo's parameters and BatchNorm population statistics are
all the inversion uses.
"""

import os
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax import checks
from dfl2l_jax import inversion
from dfl2l_jax import loops
from dfl2l_jax import metrics
from dfl2l_jax import models
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.methods import base
from dfl2l_jax.zoo import source as zoo_source
from dfl2l_jax.zoo import store

GRID_MODELS, GRID_IMAGES = 8, 10   # the picture: up to 8 models x 10 images


def init_key(seed):
  """The key of the images' initial noise: a function of the seed alone, so every method
  that asks for the images gets the same ones. (It is the key inversion_maml derived from
  its method key when it was the only user, so earlier results are reproduced.)"""
  method = jax.random.fold_in(jax.random.key(seed), zlib.crc32(b"inversion_maml") & 0x7FFFFFFF)
  return jax.random.fold_in(method, 0)


def hparams(config) -> inversion.InversionHParams:
  ic = config.inversion
  return inversion.InversionHParams(
      images_per_class=int(ic.images_per_class), lr=float(ic.lr),
      bn_weight=float(ic.bn_weight), tv_weight=float(ic.tv_weight),
      l2_weight=float(ic.l2_weight), jitter=int(ic.jitter), flip=bool(ic.flip))


def invert_zoo(ctx: base.MethodContext):
  """Every zoo model's inverted images, (N, R * P, H, W, C) in the network's input space.

  Resumes from (or reuses) workdir/fusion/inversion; shared by every method that uses
  inverted images, since it depends only on the zoo, config.seed and config.inversion
  (not on which method asks first). A zoo of several architectures: every group is
  inverted with its own network and BatchNorm statistics (workdir/fusion/inversion_GROUP
  for the groups other than the run's), and the images are the run's group's models'
  then the other groups' (zoo_source.other_groups), model after model.
  """
  bench = ctx.benchmark
  if bench.metric != "accuracy" or "ways" not in bench.spec:
    raise NotApplicable("model inversion synthesises images for a classifier zoo; a "
                        "regression zoo is queried at inputs of its domain (zoo_maml)")
  groups = [(None, bench.model, ctx.zoo, ctx.zoo_bn_stats)] + [
      (g, store.network(g.architecture), g.params, ctx.group_stats(g))
      for g in zoo_source.other_groups(bench.imported_zoo, ctx.config)]
  images, acc, first = [], [], 0
  for i, (group, net, zoo, stats) in enumerate(groups):
    if stats is None:
      raise ConfigError(
          "model inversion needs the zoo's BatchNorm population statistics, and "
          + ("this zoo has none (a network without BatchNorm, or a context built without "
             "them: methods that invert declare needs_bn_stats=True)" if group is None else
             f"the zoo's group {group.name} carries none (its manifest's batch_norm) and "
             "none were computed for it (methods that invert declare needs_bn_stats=True)"))
    name = "inversion" if group is None else f"inversion_{group.name}"
    key = init_key(ctx.config.seed) if group is None else jax.random.fold_in(
        init_key(ctx.config.seed), i)
    x, a = _invert_group(ctx, name, net, zoo, stats, key, first)
    images.append(x)
    acc.append(a)
    first += inversion.zoo_size(zoo)
  images, acc = jnp.concatenate(images), np.concatenate(acc)
  if len(groups) > 1:  # every method that learns from the images used every model
    ctx.notes["zoo_models"] = zoo_source.every_model_note(bench.imported_zoo)
  if ctx.workdir is not None:
    _write_outputs(ctx.workdir, images, acc, int(bench.spec["ways"]),
                   int(ctx.config.inversion.images_per_class))
  return images


def _invert_group(ctx, name, net, zoo, stats, init, first):
  """(images (n, R * P, H, W, C), own accuracy (n,)) of one group of n models of the
  network `net`: the loop `name` (checkpointed under workdir/fusion/name), its images
  from the key `init`, its models' augmentations drawn by their ids first, first + 1..."""
  bench = ctx.benchmark
  ways, hp = int(bench.spec["ways"]), hparams(ctx.config)
  n = inversion.zoo_size(zoo)
  chunk, optimizer = inversion.make_chunk(net, ways, hp, member_loop(net))
  images = inversion.init_images(init, n, ways, hp, bench.example_input.shape[1:])
  state = inversion.InversionState(images, optimizer.init(images), jnp.int32(0))
  zoo, stats = jax.device_put(zoo), jax.device_put(stats)
  ids = first + jnp.arange(n)
  key = jax.random.fold_in(jax.random.key(ctx.config.seed), 0x1A7E)  # not method-specific
  ic = ctx.config.inversion
  spec = {"method": "inversion", "inversion": ic.to_dict(), "seed": ctx.config.seed,
          "benchmark": bench.spec, "zoo": zoo_lib.zoo_settings(ctx.config)}
  if name != "inversion":
    spec["group"] = name[len("inversion_"):]
  state = ctx.run_loop(
      name, spec, state, total_steps=ic.steps, chunk_steps=ic.chunk_steps,
      run_chunk=lambda st, start, length: chunk(st, zoo, stats, ids, key, length=length))
  images = state.images
  if not bool(jnp.isfinite(images).all()):
    raise loops.DivergenceError(
        f"{name}: the images became non-finite by step {int(state.step)}; lower "
        "config.inversion.lr")
  acc = inversion.own_accuracy(net, zoo, stats, images, ways, hp.images_per_class)
  metrics.log.info("%s: the zoo classifies its own inverted images %.1f%% correctly "
                   "(mean over %d models; min %.1f%%)", name, acc.mean(), n, acc.min())
  return images, np.asarray(acc)


def member_loop(net):
  """How a group's inversion steps over its models (inversion.make_chunk): a network with
  XLA's convolutions (not a Conv4, whose patches convolution is fast in a compiled loop)
  one model per compiled call on CPU, where XLA's convolutions are slower vmapped or
  inside a compiled loop (looped, 3.8x the vmapped step's speed for ResNet-10 8-16-32-64:
  results/performance.md); vmapped otherwise. The same images either way (up to float
  rounding), so it is not part of the loop's spec."""
  if isinstance(net, models.Conv4) or jax.default_backend() != "cpu":
    return "vmap"
  return "loop"


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


def inversion_defaults():
  """config.inversion: DeepInversion of the zoo (dfl2l_jax/inversion.py).

  After Yin et al. 2020's CIFAR settings where they carry over (Adam on the images,
  jitter and flips, TV and L2 priors, a BatchNorm term); steps and images are cut for
  the CPU. Chosen a priori, never on test tasks.
  """
  i = ml_collections.ConfigDict()
  i.images_per_class = 10               # synthetic images per class of each zoo model
  i.steps = 300                         # Adam steps on the images
  i.lr = 0.1
  i.bn_weight = 0.05                    # BatchNorm-statistics matching
  i.tv_weight = 1e-3                    # total variation (smoothness)
  i.l2_weight = 1e-4
  i.jitter = 2                          # random circular shift, pixels each way
  i.flip = True                         # random horizontal flip
  i.chunk_steps = 50                    # steps per compiled chunk (and checkpoint)
  return i


INVERSION_FIELDS = {
    "inversion.steps": checks.POSITIVE_INT, "inversion.chunk_steps": checks.POSITIVE_INT,
    "inversion.images_per_class": checks.POSITIVE_INT, "inversion.lr": checks.POSITIVE_REAL,
    "inversion.jitter": checks.NON_NEGATIVE_INT,
    "inversion.bn_weight": checks.NON_NEGATIVE_REAL,
    "inversion.tv_weight": checks.NON_NEGATIVE_REAL,
    "inversion.l2_weight": checks.NON_NEGATIVE_REAL, "inversion.flip": checks.BOOL,
}


def validate_inversion(config):
  checks.check(config, INVERSION_FIELDS)
