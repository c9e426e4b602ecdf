"""The black-box fusion model f_phi: task embedding -> network parameters.

Paper, Sections 5.2 and 5.3: "The black-box model is structured with the same
number of layers as the pre-trained models. Each [...] layer of the black-box
model takes the task embedding as input. The output dimension is the same as the
number of parameters for the corresponding pre-trained model layer."

Here every leaf of the target network's parameter pytree (a kernel, a bias, a
BatchNorm scale) gets its own linear head

    f_phi(e)[leaf] = reshape(e @ W_leaf + b_leaf, leaf.shape)

A linear head per layer whose output is the concatenation of that layer's
kernel and bias is the same function family as one head per leaf (a linear map
into a concatenation is a concatenation of linear maps), so this is the paper's
model, and it works unchanged for any flax network: only the parameter pytree
structure (the `template`) is needed.

phi is a plain dict {"w": pytree, "b": pytree} with the structure of the
template: w leaves have shape (embed_dim, leaf.size), b leaves leaf.shape.
"""

import math

import jax
import jax.numpy as jnp


def init_hypernet(key, template, embed_dim, w_scale=1.0, b_init="zeros"):
  """Randomly initialises phi for a target parameter `template`.

  Args:
    key: PRNG key.
    template: a parameter pytree of the target network (shapes and dtypes are
      all that is used); a single model, no leading model axis.
    embed_dim: dimension d of the task embeddings.
    w_scale: the head weights are N(0, (w_scale / sqrt(d))^2), so that a unit
      norm embedding yields outputs of standard deviation about w_scale.
    b_init: "zeros", or "template" to start the head biases at the template's
      values (for example a random network initialisation).

  Returns:
    phi, a dict {"w": ..., "b": ...}.
  """
  leaves, treedef = jax.tree.flatten(template)
  keys = jax.random.split(key, len(leaves))
  std = w_scale / math.sqrt(embed_dim)
  w = [std * jax.random.normal(k, (embed_dim, leaf.size), jnp.float32)
       for k, leaf in zip(keys, leaves)]
  if b_init == "zeros":
    b = [jnp.zeros(leaf.shape, jnp.float32) for leaf in leaves]
  elif b_init == "template":
    b = [jnp.asarray(leaf, jnp.float32) for leaf in leaves]
  else:
    raise ValueError(f"b_init must be 'zeros' or 'template', got {b_init!r}")
  return {"w": jax.tree.unflatten(treedef, w), "b": jax.tree.unflatten(treedef, b)}


def apply_hypernet(phi, e):
  """f_phi(e): the parameter pytree predicted for embedding e of shape (d,)."""
  return jax.tree.map(lambda w, b: (e @ w).reshape(b.shape) + b, phi["w"], phi["b"])


def num_outputs(phi):
  """Number of network parameters the fusion model predicts."""
  return sum(b.size for b in jax.tree.leaves(phi["b"]))
