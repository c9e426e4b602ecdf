"""Small hand-made objects shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import sinusoid as sinusoid_config
from dfl2l_jax import models


def tiny_template():
  """Parameters of a 1-4-1 MLP."""
  return models.MLP(hidden=(4,), out=1).init(jax.random.key(0), jnp.zeros((1, 1)))["params"]


def toy_zoo(n, key=1, spread=1.0, rank=2):
  """n parameter pytrees theta_i = base + spread * (low-rank task factor).

  The zoo has `rank` underlying task dimensions, so a fusion model with
  embed_dim >= rank can fit it exactly.
  """
  template = tiny_template()
  leaves, treedef = jax.tree.flatten(template)
  rng = np.random.default_rng(key)
  z = rng.normal(size=(n, rank)).astype(np.float32)
  out = []
  for leaf in leaves:
    basis = rng.normal(size=(rank,) + leaf.shape).astype(np.float32)
    out.append(jnp.asarray(np.asarray(leaf)[None] + spread * np.tensordot(z, basis, 1)))
  return jax.tree.unflatten(treedef, out)


def smoke_config(**overrides):
  """The sinusoid smoke config, unlocked for overrides like zoo__steps=10."""
  c = sinusoid_config.get_config("smoke")
  with c.unlocked():
    for key, value in overrides.items():
      node = c
      parts = key.split("__")
      for p in parts[:-1]:
        node = node[p]
      node[parts[-1]] = value
  return c
