"""zoo_distill (methods/zoo_distill.py): multi-head distillation of the zoo into one init."""

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import models
from dfl2l_jax.methods import zoo_distill as zd


def _zoo_with_one_body(n=4):
  """n MLPs that share their hidden layers and differ only in the output layer."""
  net = models.MLP(hidden=(8, 8), out=1)
  p = net.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  zoo = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), p)
  heads = jax.random.normal(jax.random.key(1), (n, 8, 1))
  zoo = {**zoo, "Dense_2": {"kernel": heads, "bias": jnp.arange(n, dtype=jnp.float32)[:, None]}}
  return net, zoo


def test_a_zoo_sharing_one_body_is_reproduced_exactly_by_its_split():
  net, zoo = _zoo_with_one_body()
  apply = lambda p, x: net.apply({"params": p}, x)
  body, heads, last = zd.split_heads(zoo)
  assert last == "Dense_2" and set(body) == {"Dense_0", "Dense_1"}
  x = jnp.linspace(-5, 5, 33)[:, None]
  targets = jax.vmap(lambda p: apply(p, x))(zoo)
  assert float(zd.distill_loss(apply, last, body, heads, x, targets)) < 1e-10


def test_distillation_lowers_the_loss_and_returns_body_plus_mean_head():
  net = models.MLP(hidden=(16, 16), out=1)
  apply = lambda p, x: net.apply({"params": p}, x)
  keys = jax.random.split(jax.random.key(2), 5)
  zoo = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 1)))["params"])(keys)  # unrelated models
  body, heads, last = zd.split_heads(zoo)
  chunk, optimizer = zd.make_chunk(apply, last, (-5.0, 5.0), 32, 1e-2)
  state = zd.DistillState(body, heads, optimizer.init((body, heads)), jnp.int32(0))
  state, metrics = chunk(state, zoo, jax.random.key(3), length=300)
  losses = np.asarray(metrics["loss"])
  assert int(state.step) == 300 and losses[-20:].mean() < 0.3 * losses[:20].mean()
