"""zoo_distill: one initialisation that carries the zoo's functions.

The paper's interface (one theta_init, fine-tuned by Algorithm 3) with the zoo's
function-space knowledge. A network of the target architecture is distilled from the
whole zoo at once on pseudo-inputs: its hidden layers are shared, and its output layer
is replaced by one head per zoo model, trained so that head i on the shared features
reproduces zoo model i,

    min_{body, heads}  mean_i mean_x ( head_i(body(x)) - f_i(x) )^2,   x ~ U(input domain),

so the shared features must span every function of the zoo. theta_init is the trained
body with the mean of the heads as its output layer: the zoo's mean function, computed
from features in which each zoo function is one linear head away. No task data: the
targets are the zoo models' outputs at fresh uniform inputs every step.

Images (Conv4 zoos): the pseudo-inputs are the zoo's inverted images
(methods/inverted_images.py: every model's DeepInversion images of its own classes,
pooled), and the targets every zoo model's logits on them, each model in evaluation
mode (BatchNorm by its population statistics, the function the pretrained model
computes), computed once. The student normalises with its batch's statistics, as in
every meta-test here, and matches logits up to a per-example shift (softmax ignores
one), i.e. the squared error of logits centred over the classes:

    min_{body, heads}  mean_i mean_x || c(W_i g(x) + b_i) - c(f_i(x)) ||^2 / R,
    c(z) = z - mean_r z_r,   g the shared convolutional body, x from the pool,

with no augmentation (the targets stay exact). theta_init is the body with the mean
head, as for regression.

A zoo of several architectures: every model of every group is a teacher (its logits in
evaluation mode, by its own network and BatchNorm statistics), on the pool of every
group's inverted images; the student is the run's group's network (config.zoo.group), its
body from that group's average; the head of a teacher of another architecture starts as
the mean of the run's group's heads.

Untrusted models (`zoo_distill.screen`, images; off by default): "untrained" applies
zoo_features' screen (its rule and its `zoo_features.screen_*` settings: a model is kept if
its own features beat every untrained network of its architecture on meta-validation
episodes; never the test tasks) to the run's group, and only the models it keeps are
teachers: their inverted images, their logits, their heads, their average as the body's
start (a mixed zoo's other groups stay, as in zoo_features). The images are the shared
inversion of every model (methods/inverted_images.py), of which the kept models' are used.
Each model's score and fate are recorded with the rows (`notes.screen`).

Start: the body from the zoo's average (VA), head i from model i's own output layer.
Adam (`zoo_distill.lr`) for `zoo_distill.steps` steps of `zoo_distill.batch_size`
inputs shared by all heads, in one compiled `lax.scan` per chunk of
`zoo_distill.chunk_steps` (checkpointed, resumable, like every meta-training loop).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dfl2l_jax import checks
from dfl2l_jax import models
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import base
from dfl2l_jax.methods import inverted_images
from dfl2l_jax.methods import zoo_features
from dfl2l_jax.zoo import source as zoo_source
from dfl2l_jax.zoo import store


class DistillState(NamedTuple):
  body: Any            # the shared hidden layers
  heads: Any           # one output layer per zoo model (leading axis: model)
  opt_state: Any       # Adam's state over (body, heads)
  step: jax.Array      # int32 scalar


def output_layer(params):
  """The name of an MLP's output layer (the Dense_i with the largest i)."""
  names = [k for k in params if k.startswith("Dense_")]
  if not names:
    raise NotApplicable("zoo_distill needs a network whose output layer is a Dense_i")
  return max(names, key=lambda k: int(k.split("_")[1]))


def split_heads(zoo):
  """(body: the zoo's average without its output layer, heads: each model's output layer)."""
  last = output_layer(zoo)
  body = {k: jax.tree.map(lambda x: x.mean(0), v) for k, v in zoo.items() if k != last}
  return body, zoo[last], last


def distill_loss(apply, last, body, heads, x, targets):
  """Mean over models and inputs of (head_i(body(x)) - f_i(x))^2; targets (N, B, 1)."""
  def one(head, y):
    return jnp.mean(jnp.square(apply({**body, last: head}, x) - y))
  return jnp.mean(jax.vmap(one)(heads, targets))


@functools.lru_cache(maxsize=8)
def make_chunk(apply, last, domain, batch_size, lr):
  optimizer = optax.adam(lr)

  @functools.partial(jax.jit, static_argnames=("length",))
  def chunk(state, zoo, key, *, length):
    def step(st, _):
      k = jax.random.fold_in(key, st.step)
      x = jax.random.uniform(k, (batch_size, 1), minval=domain[0], maxval=domain[1])
      targets = jax.vmap(lambda p: apply(p, x))(zoo)
      loss, grads = jax.value_and_grad(
          lambda bh: distill_loss(apply, last, bh[0], bh[1], x, targets))((st.body, st.heads))
      updates, opt_state = optimizer.update(grads, st.opt_state)
      body, heads = optax.apply_updates((st.body, st.heads), updates)
      return DistillState(body, heads, opt_state, st.step + 1), {"loss": loss}
    return jax.lax.scan(step, state, None, length=length)
  return chunk, optimizer


def centred(z):
  """Logits shifted to mean zero over the classes (the last axis)."""
  return z - z.mean(-1, keepdims=True)


def image_distill_loss(features, body, heads, x, targets):
  """mean_i mean_x ||c(head_i(g(x))) - c(f_i(x))||^2 / R; targets (N, B, R), the body's
  features g(x) computed once for all heads."""
  g = features(body, x)                                                   # (B, F)
  logits = jnp.einsum("bf,nfr->nbr", g, heads["kernel"]) + heads["bias"][:, None, :]
  return jnp.mean(jnp.square(centred(logits) - centred(targets)))


@functools.lru_cache(maxsize=8)
def _teacher_block(model):
  """Compiled once per network: every zoo model's evaluation-mode logits on a block."""
  @jax.jit
  def one_block(zoo, bn_stats, x):
    return jax.lax.map(lambda ps: model.apply({"params": ps[0], "batch_stats": ps[1]}, x,
                                              train=False), (zoo, bn_stats))
  return one_block


def teacher_logits(model, zoo, bn_stats, pool, block=256):
  """(N, P, R): every zoo model's logits on every pool image, in evaluation mode (its
  BatchNorm population statistics). One model at a time per block of images, so the
  memory is one network's activations on `block` images. The zoo is an argument of the
  compiled block, not a constant baked into it."""
  one_block = _teacher_block(model)
  return jnp.concatenate([one_block(zoo, bn_stats, pool[i:i + block])
                          for i in range(0, len(pool), block)], axis=1)


@functools.lru_cache(maxsize=8)
def make_image_chunk(model, batch_size, lr):
  """`chunk(state, pool, targets, key, length)`: distillation steps on pool images."""
  optimizer = optax.adam(lr)
  body_net = model.clone(head=False)
  features = lambda body, x: models.apply_train_mode(body_net, body, x)

  @functools.partial(jax.jit, static_argnames=("length",))
  def chunk(state, pool, targets, key, *, length):
    def step(st, _):
      idx = jax.random.randint(jax.random.fold_in(key, st.step), (batch_size,), 0,
                               pool.shape[0])
      loss, grads = jax.value_and_grad(lambda bh: image_distill_loss(
          features, bh[0], bh[1], pool[idx], targets[:, idx]))((st.body, st.heads))
      updates, opt_state = optimizer.update(grads, st.opt_state)
      body, heads = optax.apply_updates((st.body, st.heads), updates)
      return DistillState(body, heads, opt_state, st.step + 1), {"loss": loss}
    return jax.lax.scan(step, state, None, length=length)
  return chunk, optimizer


def zoo_distill_images(ctx: base.MethodContext):
  """The image form: pseudo-inputs are the zoo's inverted images (module docstring)."""
  if not isinstance(ctx.benchmark.model, models.Conv4):
    raise NotApplicable(f"zoo_distill for images needs a Conv4 zoo, got "
                        f"{type(ctx.benchmark.model).__name__}")
  dc = ctx.config.zoo_distill
  images = inverted_images.invert_zoo(ctx)                  # (N, R * P, H, W, C)
  zoo, bn_stats, keep = ctx.zoo, ctx.zoo_bn_stats, screened(ctx)
  if keep is not None:  # the kept models of the run's group, then every other group's
    n = jax.tree.leaves(zoo)[0].shape[0]
    images = jnp.concatenate([images[keep], images[n:]])
    zoo, bn_stats = jax.tree.map(lambda x: x[keep], (zoo, bn_stats))
  pool = images.reshape((-1,) + images.shape[2:])
  targets = teacher_logits(ctx.benchmark.model, jax.device_put(zoo),
                           jax.device_put(bn_stats), pool)
  body, heads, last = split_heads(zoo)
  others = zoo_source.other_groups(ctx.benchmark.imported_zoo, ctx.config)
  if others:  # a mixed zoo: every model a teacher; its head starts as the mean head
    targets = jnp.concatenate([targets] + [teacher_logits(
        store.network(g.architecture), jax.device_put(g.params),
        jax.device_put(ctx.group_stats(g)), pool) for g in others])
    count = sum(len(g.indices) for g in others)
    heads = jax.tree.map(lambda h: jnp.concatenate(
        [h, jnp.broadcast_to(h.mean(0), (count,) + h.shape[1:])]), heads)
  chunk, optimizer = make_image_chunk(ctx.benchmark.model, int(dc.batch_size), float(dc.lr))
  state = DistillState(body, heads, optimizer.init((body, heads)), jnp.int32(0))
  key = jax.random.fold_in(ctx.key, 1)
  spec = {"method": "zoo_distill", "zoo_distill": loop_settings(dc), "seed": ctx.config.seed,
          "benchmark": ctx.benchmark.spec, "inversion": ctx.config.inversion.to_dict(),
          "pseudo_inputs": "inverted images"}
  if others:  # a checkpoint of fewer teachers is another distillation
    spec["teachers"] = zoo_source.every_model_note(ctx.benchmark.imported_zoo)
  if keep is not None:
    spec["screened_teachers"] = [int(i) for i in keep]
  state = ctx.run_loop(
      "zoo_distill", spec, state, total_steps=dc.steps, chunk_steps=dc.chunk_steps,
      run_chunk=lambda st, start, length: chunk(st, pool, targets, key, length=length))
  return {**state.body, last: jax.tree.map(lambda x: x.mean(0), state.heads)}


def loop_settings(dc):
  """config.zoo_distill as its loop's spec records it: without `screen` (the teachers it
  keeps are recorded instead), so that workdirs from before the field existed resume."""
  return {k: v for k, v in dc.to_dict().items() if k != "screen"}


def screened(ctx):
  """The indices of the run's group's models that `zoo_distill.screen` keeps (noted in
  ctx.notes["screen"]), or None when it is off."""
  if ctx.config.zoo_distill.get("screen", "off") == "off":
    return None
  keep, record = zoo_features.screen(ctx, ctx.benchmark.model.clone(head=False),
                                     zoo_features.group_state(ctx), option="zoo_distill.screen")
  ctx.notes["screen"] = record
  return jnp.asarray(keep)


def zoo_distill(ctx: base.MethodContext):
  bench = ctx.benchmark
  if bench.metric == "accuracy" and "ways" in bench.spec:
    return zoo_distill_images(ctx)
  if bench.metric != "mse" or "domain" not in bench.spec:
    raise NotApplicable("zoo_distill draws pseudo-inputs from a regression benchmark's input "
                        "domain or inverts a classifier zoo; this benchmark is neither")
  dc = ctx.config.zoo_distill
  body, heads, last = split_heads(ctx.zoo)
  chunk, optimizer = make_chunk(ctx.benchmark.apply, last, tuple(ctx.benchmark.spec["domain"]),
                                int(dc.batch_size), float(dc.lr))
  state = DistillState(body, heads, optimizer.init((body, heads)), jnp.int32(0))
  zoo = jax.device_put(ctx.zoo)
  key = jax.random.fold_in(ctx.key, 1)
  spec = {"method": "zoo_distill", "zoo_distill": loop_settings(dc), "seed": ctx.config.seed,
          "benchmark": ctx.benchmark.spec}
  state = ctx.run_loop(
      "zoo_distill", spec, state, total_steps=dc.steps, chunk_steps=dc.chunk_steps,
      run_chunk=lambda st, start, length: chunk(st, zoo, key, length=length))
  return {**state.body, last: jax.tree.map(lambda x: x.mean(0), state.heads)}


def defaults():
  """config.zoo_distill."""
  z = ml_collections.ConfigDict()
  z.steps = 3000                        # Adam steps
  z.batch_size = 64                     # pseudo-inputs per step, shared by every head
  z.lr = 1e-3
  z.chunk_steps = 500                   # steps per compiled chunk (and checkpoint)
  z.screen = "off"                      # off | untrained: zoo_features' screen (module doc)
  return z


FIELDS = {"zoo_distill.steps": checks.POSITIVE_INT,
          "zoo_distill.batch_size": checks.POSITIVE_INT,
          "zoo_distill.chunk_steps": checks.POSITIVE_INT,
          "zoo_distill.lr": checks.POSITIVE_REAL,
          "zoo_distill.screen": checks.one_of(("off", "untrained"))}


def validate(config):
  checks.check(config, FIELDS)
  if config.benchmark == "sinusoid" and config.zoo_distill.get("screen", "off") != "off":
    raise ConfigError("zoo_distill.screen scores a classifier zoo on meta-validation "
                      "classes; a regression zoo has none: leave it off")
  inverted_images.validate_inversion(config)              # the pseudo-inputs of images


ZOO_DISTILL = base.Method(
    "zoo_distill", ("function_space",), zoo_distill,
    "one network distilled from the whole zoo on pseudo-inputs (shared body, a head per "
    "model; init = body + mean head; uniform inputs for regression, inverted images for "
    "images; data-free)", validate, needs_bn_stats=True,
    sections={"zoo_distill": defaults, "inversion": inverted_images.inversion_defaults})
