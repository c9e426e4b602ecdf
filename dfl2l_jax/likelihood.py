"""The Gaussian likelihood of a pretrained model under the fusion model (Eq. 2).

    log P(theta | f_phi(e)) = -||f_phi(e) - theta||^2 / sigma^2          (Eq. 2)

The squared norm runs over every parameter of the network: the sum over all
leaves of the parameter pytree. Normalising constants of the Gaussian do not
depend on phi or e and are dropped, as in the paper.
"""

import jax
import jax.numpy as jnp


def squared_distance(pred, theta):
  """||pred - theta||^2 summed over all leaves of two pytrees of one structure."""
  leaves = jax.tree.leaves(
      jax.tree.map(lambda p, t: jnp.sum(jnp.square(p - t)), pred, theta))
  return sum(leaves, jnp.zeros((), jnp.float32))


def gaussian_log_likelihood(pred, theta, sigma):
  """Eq. (2): log P(theta | pred) = -||pred - theta||^2 / sigma^2.

  Args:
    pred: parameter pytree predicted by the fusion model, f_phi(e).
    theta: the pretrained parameter pytree (same structure and shapes).
    sigma: the standard deviation constant of Eq. (2), > 0.

  Returns:
    A scalar.
  """
  return -squared_distance(pred, theta) / (sigma ** 2)
