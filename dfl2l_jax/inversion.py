"""Model inversion: images synthesised from the zoo's CNNs alone (DeepInversion).

DeepInversion (Yin et al., CVPR 2020) recovers training-like images from a trained
classifier with BatchNorm: starting from noise, images x with intended labels y are
optimised so that the network classifies them as y and the statistics of every
BatchNorm layer's input on the batch match the layer's stored population statistics:

    L(x) = CE(f(T(x)), y)
           + w_bn * sum_l ( ||mu_l(T(x)) - mu_l||_2 + ||var_l(T(x)) - var_l||_2 )
           + w_tv * TV(x) + w_l2 * mean(x^2),

T a random jitter (a circular shift of up to `jitter` pixels) and horizontal flip per
step, the network in evaluation mode (normalised by its population statistics),
mu_l / var_l of a layer's input over the batch and the spatial positions, TV the mean
absolute difference of neighbouring pixels. Images live in the network's input space
(normalised pixels). Here every zoo model inverts its own R classes at once, with
`images_per_class` images each: one compiled step vmapped over the model axis (the
zoo's models are independent problems of one shape), Adam, chunked and checkpointed
like every training loop. No task data is read: the zoo's parameters and BatchNorm
statistics are all it uses.
"""

import functools
import os
import struct
import zlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl2l_jax import models


class InversionHParams(NamedTuple):
  """Settings of one inversion (config.inversion; defaults and comments in
  methods/inverted_images.inversion_defaults)."""
  images_per_class: int
  lr: float
  bn_weight: float
  tv_weight: float
  l2_weight: float
  jitter: int
  flip: bool


class InversionState(NamedTuple):
  images: Any          # (N, R * P, H, W, C): model m's images, class-major
  opt_state: Any
  step: jax.Array      # int32 scalar


def labels(ways, per_class):
  """The intended labels of one model's images: class-major, per_class of each."""
  return jnp.repeat(jnp.arange(ways), per_class)


def _is_batch_norm(module):
  return isinstance(module, (nn.BatchNorm, models.FusedBatchNorm))


def forward_with_bn_inputs(model, params, bn_stats, x):
  """Logits of `x` in evaluation mode (BatchNorm by `bn_stats`), and the input of every
  BatchNorm layer, [(the layer's path in bn_stats, its input)] in the order the network
  calls them. Any network whose BatchNorm layers are `nn.BatchNorm` or
  `models.FusedBatchNorm` (the Conv4s and ResNets of models.py)."""
  seen = []

  def record(call, args, kwargs, context):
    if context.method_name == "__call__" and _is_batch_norm(context.module):
      seen.append((context.module.scope.path, args[0]))
    return call(*args, **kwargs)

  with nn.intercept_methods(record):
    logits = model.apply({"params": params, "batch_stats": bn_stats}, x, train=False)
  return logits, seen


def bn_matching_loss(bn_inputs, bn_stats):
  """sum_l ||mean_l - mu_l||_2 + ||var_l - var_l^pop||_2 over the BatchNorm layers
  (forward_with_bn_inputs' (path, input) pairs)."""
  total = 0.0
  for path, h in bn_inputs:
    pop = functools.reduce(lambda tree, name: tree[name], path, bn_stats)
    axes = tuple(range(h.ndim - 1))
    mean = h.mean(axes)
    var = jnp.maximum((h * h).mean(axes) - mean * mean, 0.0)
    total = total + jnp.linalg.norm(mean - pop["mean"]) + jnp.linalg.norm(var - pop["var"])
  return total


def total_variation(x):
  """Mean absolute difference between vertically and horizontally neighbouring pixels."""
  return (jnp.abs(x[:, 1:] - x[:, :-1]).mean() + jnp.abs(x[:, :, 1:] - x[:, :, :-1]).mean())


def augment(x, key, jitter, flip):
  """One random circular shift (up to `jitter` pixels each way) and horizontal flip of
  the whole batch, as in DeepInversion."""
  k_dx, k_dy, k_flip = jax.random.split(key, 3)
  if jitter > 0:
    dx = jax.random.randint(k_dx, (), -jitter, jitter + 1)
    dy = jax.random.randint(k_dy, (), -jitter, jitter + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
  if flip:
    x = jnp.where(jax.random.bernoulli(k_flip), x[:, :, ::-1], x)
  return x


def inversion_loss(model, params, bn_stats, x, y, key, hp: InversionHParams):
  """DeepInversion's objective for one model (module doc); returns (loss, parts)."""
  logits, bn_inputs = forward_with_bn_inputs(model, params, bn_stats,
                                             augment(x, key, hp.jitter, hp.flip))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  bn = bn_matching_loss(bn_inputs, bn_stats)
  tv = total_variation(x)
  l2 = jnp.mean(x * x)
  loss = ce + hp.bn_weight * bn + hp.tv_weight * tv + hp.l2_weight * l2
  return loss, {"ce": ce, "bn": bn}


def init_images(key, num_models, ways, hp: InversionHParams, image_shape):
  """Standard normal noise, the usual start (normalised pixel space)."""
  return jax.random.normal(key, (num_models, ways * hp.images_per_class) + tuple(image_shape))


@functools.lru_cache(maxsize=8)
def make_chunk(model, ways, hp: InversionHParams, member_loop: str = "vmap"):
  """Returns (`chunk(state, zoo, bn_stats, ids, key, length)`, optimizer).

  One step updates every model's images: `member_loop` "vmap" computes all models'
  gradients at once in one compiled step, "map" one model after another inside it
  (`lax.map`), "loop" one model's gradient per compiled call, models and steps looped
  from Python (no model axis and no compiled loop around a model's step, which XLA's
  CPU convolutions need to stay fast: docs/implementation.md, "member_loop"). The Adam
  update is elementwise and the same in every form; so are the results (up to float
  rounding). Model `ids[m]` draws its augmentations at step t from
  fold_in(fold_in(key, t), ids[m]), so results depend neither on where chunks are cut
  nor on which models are inverted together.
  """
  if member_loop not in ("vmap", "map", "loop"):
    raise ValueError(f"member_loop must be 'vmap', 'map' or 'loop', got {member_loop!r}")
  optimizer = optax.adam(hp.lr)
  y = labels(ways, hp.images_per_class)

  def one_model(params, stats, x, key):
    grad_fn = jax.value_and_grad(
        lambda x: inversion_loss(model, params, stats, x, y, key, hp), has_aux=True)
    (loss, parts), g = grad_fn(x)
    return g, dict(parts, loss=loss)

  def every_model(zoo, bn_stats, images, keys):
    if member_loop == "map":
      return jax.lax.map(lambda a: one_model(*a), (zoo, bn_stats, images, keys))
    return jax.vmap(one_model)(zoo, bn_stats, images, keys)

  def model_keys(key, step, ids):
    k_step = jax.random.fold_in(key, step)
    return jax.vmap(lambda i: jax.random.fold_in(k_step, i))(ids)

  def update(st, grads, parts):
    updates, opt_state = optimizer.update(grads, st.opt_state)
    images = optax.apply_updates(st.images, updates)
    summary = {"loss_mean": parts["loss"].mean(), "ce_mean": parts["ce"].mean(),
               "bn_mean": parts["bn"].mean()}
    return InversionState(images, opt_state, st.step + 1), summary

  if member_loop == "loop":
    grad_of_one, update_all = jax.jit(one_model), jax.jit(update)
    keys_of, row = jax.jit(model_keys), lambda tree, m: jax.tree.map(lambda x: x[m], tree)

    def looped(state, zoo, bn_stats, ids, key, *, length):
      summaries = []
      for _ in range(length):
        keys = keys_of(key, state.step, ids)
        out = [grad_of_one(row(zoo, m), row(bn_stats, m), state.images[m], keys[m])
               for m in range(ids.shape[0])]
        grads, parts = jax.tree.map(lambda *x: jnp.stack(x), *out)
        state, summary = update_all(state, grads, parts)
        summaries.append(summary)
      return state, jax.tree.map(lambda *x: jnp.stack(x), *summaries)
    return looped, optimizer

  @functools.partial(jax.jit, static_argnames=("length",))
  def chunk(state, zoo, bn_stats, ids, key, *, length):
    def step(st, _):
      grads, parts = every_model(zoo, bn_stats, st.images, model_keys(key, st.step, ids))
      return update(st, grads, parts)
    return jax.lax.scan(step, state, None, length=length)
  return chunk, optimizer


def zoo_size(zoo):
  return jax.tree.leaves(zoo)[0].shape[0]


@functools.lru_cache(maxsize=8)
def _own_accuracy_program(model, ways, per_class):
  y = labels(ways, per_class)

  def one(params, stats, x):
    logits, _ = forward_with_bn_inputs(model, params, stats, x)
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == y)
  return jax.jit(lambda z, s, xs: jax.lax.map(lambda a: one(*a), (z, s, xs)))


def own_accuracy(model, zoo, bn_stats, images, ways, per_class):
  """(N,) percent of its own inverted images each zoo model classifies as intended
  (evaluation mode, no augmentation)."""
  return np.asarray(_own_accuracy_program(model, ways, per_class)(zoo, bn_stats, images))


def to_uint8(images):
  """Images in any range -> uint8 for viewing, each image min-max scaled on its own."""
  x = np.asarray(images, np.float64)
  lo = x.min(axis=(-3, -2, -1), keepdims=True)
  hi = x.max(axis=(-3, -2, -1), keepdims=True)
  return np.round(255.0 * (x - lo) / np.maximum(hi - lo, 1e-12)).astype(np.uint8)


def grid(images, rows, cols, pad=2):
  """(rows, cols, H, W, C) uint8 -> one (rows (H + pad) + pad, ...) uint8 picture."""
  images = np.asarray(images)[:rows, :cols]
  r, c, h, w, ch = images.shape
  out = np.full((r * (h + pad) + pad, c * (w + pad) + pad, ch), 255, np.uint8)
  for i in range(r):
    for j in range(c):
      out[pad + i * (h + pad):pad + i * (h + pad) + h,
          pad + j * (w + pad):pad + j * (w + pad) + w] = images[i, j]
  return out


def write_png(path, image):
  """Writes an (H, W, 3) uint8 array as a PNG (zlib only: no imaging library needed)."""
  image = np.asarray(image, np.uint8)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"write_png wants (H, W, 3) uint8, got shape {image.shape}")
  h, w, _ = image.shape
  raw = b"".join(b"\x00" + image[i].tobytes() for i in range(h))

  def chunk(tag, data):
    body = tag + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

  png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(png)
  os.replace(tmp, path)
