"""The Wasserstein DRO inner minimisation over perturbed embeddings (Eq. 8).

By Lagrangian duality (Eqs. 5-7) and Blanchet & Murthy (2017) the worst case
over a Wasserstein ball of embedding distributions becomes, per embedding e,

    e* = argmin_{e'}  log P(theta | f_phi*(e')) + gamma * ||e - e'||^2     (Eq. 8)

Algorithm 1 line 5 (and Algorithm 2 line 4) solve it approximately with K steps
of gradient descent started at e' = e. The first term pulls e' towards
embeddings whose predicted parameters are *far* from theta (the worst case);
the transport cost gamma * ||e - e'||^2 keeps e' near e. gamma -> infinity
leaves e' = e.

The loop is a fixed-length `lax.scan` so that the function is jit-able,
vmap-able over a batch of validation models, and differentiable.
"""

import jax
import jax.numpy as jnp

from dfl2l_jax import hypernetwork
from dfl2l_jax import likelihood


def dro_objective(e_prime, e, phi, theta, sigma, gamma):
  """The objective of Eq. (8) for one model: log P(theta|f_phi(e')) + gamma c(e, e')."""
  pred = hypernetwork.apply_hypernet(phi, e_prime)
  return (likelihood.gaussian_log_likelihood(pred, theta, sigma)
          + gamma * jnp.sum(jnp.square(e - e_prime)))


def dro_perturb(phi, e, theta, *, sigma, gamma, steps, lr):
  """Algorithm 1 line 5: `steps` gradient-descent steps on Eq. (8) from e' = e.

  Args:
    phi: fusion-model parameters phi* (after the inner ascent step).
    e: the embedding e_j of validation model j, shape (d,).
    theta: that model's pretrained parameter pytree.
    sigma: Eq. (2)'s standard deviation.
    gamma: the transport-cost weight (Lagrange multiplier) of Eq. (7).
    steps: K, a static Python int >= 0.
    lr: gradient-descent step size.

  Returns:
    e*, the perturbed embedding, shape (d,).
  """
  grad_fn = jax.grad(dro_objective)

  def body(e_prime, _):
    return e_prime - lr * grad_fn(e_prime, e, phi, theta, sigma, gamma), None

  e_star, _ = jax.lax.scan(body, e, None, length=steps)
  return e_star


def dro_perturb_batch(phi, es, thetas, *, sigma, gamma, steps, lr):
  """`dro_perturb` vmapped over a batch of validation models (leading axis)."""
  fn = lambda e, th: dro_perturb(phi, e, th, sigma=sigma, gamma=gamma, steps=steps, lr=lr)
  return jax.vmap(fn)(es, thetas)
