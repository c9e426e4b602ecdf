"""inversion_maml: MAML on pseudo episodes made of images inverted from the zoo (images).

Data-free meta-learning for image zoos in two phases, neither reading the zoo tasks' data:

1. Model inversion (methods/inverted_images.py, dfl2l_jax/inversion.py): every zoo
   model synthesises `inversion.images_per_class` images of each of its R classes from
   its parameters and BatchNorm population statistics (DeepInversion). Checkpointed under
   workdir/fusion/inversion; a grid of the images is written to
   workdir/inversion_grid.png, and how each model classifies its own images is logged
   and saved in workdir/fusion/inversion/summary.json.
2. MAML (second order, `inversion_maml.first_order` for first order) with the settings
   of `config.maml`, on pseudo episodes: one zoo model's R classes, its labels permuted
   by one of `inversion_maml.label_perms` fixed random permutations per model (so no
   class keeps one output unit), support and query batches drawn from that model's
   synthetic images: `config.zoo.batch_size` images each (the zoo trainer's batch, as
   for `maml`), cut to `maml.support_size` / `maml.query_size` where those are set. The
   MAML's cost grows with it: a run with `--config.zoo.batch_size=128` (how our CPU zoos
   of results/imported_zoo.md were trained) took 7x as long per step as one with the
   default 16. Starts from the zoo's average (`start = "va"`) or the benchmark's random
   initialisation (`"random"`).

A zoo of several architectures: every group is inverted by its own network (phase 1), so
the pseudo episodes come from every model; the network meta-trained, and its start, are
the run's group's (config.zoo.group).
"""

import functools

import jax
import ml_collections
import numpy as np

from dfl2l_jax import checks
from dfl2l_jax import metalearning as maml_lib
from dfl2l_jax.methods import base
from dfl2l_jax.methods import inverted_images
from dfl2l_jax.methods import meta_training

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
  images = inverted_images.invert_zoo(ctx)
  mc, ic = ctx.config.maml, ctx.config.inversion_maml
  ways, per_class = int(ctx.benchmark.spec["ways"]), int(ctx.config.inversion.images_per_class)
  n = images.shape[0]  # every model of every group of a mixed zoo
  models, perms = label_permutations(ctx.config.seed, n, ways, int(ic.label_perms))
  tasks = jax.device_put({"model": models, "perm": perms})
  batch_fn = pseudo_episode_batch_fn(ways, per_class, int(ctx.config.zoo.batch_size))
  hp = meta_training.hparams(mc, bool(ic.first_order), "vmap")
  chunk = meta_training.make_meta_chunk(
      batch_fn, ctx.benchmark.loss_fn, float(mc.outer_lr), hp,
      maml_lib.UniformTasks(len(models), mc.meta_batch_size))
  start = jax.tree.map(lambda x: x.mean(0), ctx.zoo) if ic.start == "va" else None
  spec = dict(meta_training.spec_common(ctx, name, len(models), bool(ic.first_order)),
              inversion=ctx.config.inversion.to_dict(), inversion_maml=ic.to_dict(),
              benchmark=ctx.benchmark.spec)
  return meta_training.meta_train(ctx, name, spec, mc.meta_steps, chunk,
                                 lambda start_, length: tasks, start=start, data=images).params


def defaults():
  """config.inversion_maml (steps, batches and rates are config.maml's)."""
  z = ml_collections.ConfigDict()
  z.start = "va"                        # va: from the zoo's average | random
  z.first_order = False
  z.label_perms = 8                     # label permutations per zoo model
  return z


FIELDS = {"inversion_maml.start": checks.one_of(("va", "random")),
          "inversion_maml.first_order": checks.BOOL,
          "inversion_maml.label_perms": checks.POSITIVE_INT}


def validate(config):
  meta_training.validate_maml(config)
  inverted_images.validate_inversion(config)
  checks.check(config, FIELDS)


INVERSION_MAML = base.Method(
    "inversion_maml", ("function_space",), inversion_maml,
    "MAML on pseudo episodes of images inverted from the zoo (DeepInversion; data-free; "
    "images)", validate, needs_bn_stats=True,
    sections={"inversion_maml": defaults, "inversion": inverted_images.inversion_defaults},
    reads=("maml",))
