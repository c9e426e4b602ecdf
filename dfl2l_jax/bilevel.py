"""The parts of the first-order bi-level DRO update, Algorithm 1 lines 4-6 (Eqs. 3, 8).

The step itself is `algorithms.step`; this module holds what it is built from: its
state and hyperparameters, Eq. (2)'s likelihood of a batch, line 4's inner ascent, and
Eqs. (9)-(10)'s meta-initialisation. One step, for a batch of meta-training models i
in S and validation models j in Q:

  line 4  phi* = phi + inner_lr * grad_phi  mean_i log P(theta_i | f_phi(e_i))   (K steps)
          (e_i ascends its own likelihood at the same time: embeddings are
          learned jointly with phi, paper Section 5.2)
  line 5  e*_j = argmin_{e'} log P(theta_j | f_phi*(e')) + gamma ||e_j - e'||^2    (Eq. 8)
  line 6  phi  <- phi + outer_lr * grad_{phi*} mean_j log P(theta_j | f_phi*(e*_j))

Line 6 is first-order, as FO-MAML: the gradient is taken at phi* and applied to
phi, ignoring d phi*/d phi. With `keep_inner_update=True` it is applied to phi*
instead (a Reptile-like variant; off by default). The validation embeddings e_j
are learned by the same outer gradient, taken at e*_j (the perturbation is held
fixed, the first-order treatment of e*'s dependence on e_j).

The step maximises log-likelihoods; optax minimises, so the gradients handed to
the optimizer are negated.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dfl2l_jax import hypernetwork
from dfl2l_jax import likelihood


@dataclasses.dataclass(frozen=True)
class FusionHParams:
  """Static hyperparameters of the bi-level DRO update (hashable: a jit static)."""
  sigma: float = 1.0
  gamma: float = 1.0
  inner_steps: int = 1          # K of Algorithm 1 line 4.
  inner_lr: float = 0.03
  dro_steps: int = 1            # K of Algorithm 1 line 5.
  dro_lr: float = 0.03
  embed_lr: float = 0.03
  use_dro: bool = True          # False: Eq. (3) alone (ablation `dfl2l_no_dro`).
  keep_inner_update: bool = False
  learn_val_embeddings: bool = True


class FusionState(NamedTuple):
  """Everything the fusion loops carry. A pytree; checkpointed as is."""
  phi: Any                 # fusion-model parameters, see hypernetwork.py
  emb_s: jax.Array         # (n_S, d) embeddings of the meta-training models
  emb_q: jax.Array         # (n_Q, d) embeddings of the meta-validation models
  opt_state: Any           # optax state of phi
  step: jax.Array          # int32 scalar: bi-level steps done


def init_state(key, template, n_s, n_q, embed_dim, optimizer, *,
               w_scale=1.0, embed_init_std=None, b_init="zeros"):
  """Random phi (Algorithm 1 line 1) and random embeddings for n_S + n_Q models."""
  k_phi, k_s, k_q = jax.random.split(key, 3)
  phi = hypernetwork.init_hypernet(k_phi, template, embed_dim, w_scale, b_init)
  std = embed_init_std if embed_init_std is not None else embed_dim ** -0.5
  return FusionState(
      phi=phi,
      emb_s=std * jax.random.normal(k_s, (n_s, embed_dim), jnp.float32),
      emb_q=std * jax.random.normal(k_q, (n_q, embed_dim), jnp.float32),
      opt_state=optimizer.init(phi),
      step=jnp.zeros((), jnp.int32))


def batch_log_likelihood(phi, embeddings, thetas, sigma):
  """Per-model Eq. (2) for a batch: embeddings (B, d), thetas with leading axis B."""
  fn = lambda e, th: likelihood.gaussian_log_likelihood(
      hypernetwork.apply_hypernet(phi, e), th, sigma)
  return jax.vmap(fn)(embeddings, thetas)


def sum_log_likelihood(phi, embeddings, thetas, sigma):
  return jnp.sum(batch_log_likelihood(phi, embeddings, thetas, sigma))


def inner_ascent(phi, emb, thetas, hp: FusionHParams):
  """Algorithm 1 line 4: K ascent steps on the meta-training likelihood.

  phi ascends the batch-mean log-likelihood with rate inner_lr; each embedding
  ascends its own model's log-likelihood with rate embed_lr. A fixed-length scan.

  Returns:
    (phi*, updated embeddings, mean log-likelihood before the first step).
  """
  batch = emb.shape[0]
  grad_fn = jax.value_and_grad(sum_log_likelihood, argnums=(0, 1))

  def body(carry, _):
    p, e = carry
    value, (g_phi, g_e) = grad_fn(p, e, thetas, hp.sigma)
    p = jax.tree.map(lambda x, g: x + hp.inner_lr * g / batch, p, g_phi)
    return (p, e + hp.embed_lr * g_e), value / batch

  (phi_star, emb), values = jax.lax.scan(body, (phi, emb), None, length=hp.inner_steps)
  first = values[0] if hp.inner_steps > 0 else jnp.nan
  return phi_star, emb, first


def mean_embedding(state: FusionState):
  """Eq. (9): the average embedding of all pretrained models (S and Q)."""
  return jnp.concatenate([state.emb_s, state.emb_q], 0).mean(0)


def meta_init(state: FusionState):
  """Eq. (10): theta_init = f_phi_meta(e_init)."""
  return hypernetwork.apply_hypernet(state.phi, mean_embedding(state))
