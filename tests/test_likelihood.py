import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import likelihood


def test_known_value_on_hand_built_trees():
  pred = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array([[0.0, 1.0], [1.0, 1.0]])}}
  theta = {"a": jnp.array([0.0, 0.0]), "b": {"c": jnp.array([[0.0, 0.0], [0.0, 3.0]])}}
  # ||pred - theta||^2 = 1 + 4 + 0 + 1 + 1 + 4 = 11
  assert float(likelihood.squared_distance(pred, theta)) == pytest.approx(11.0)
  assert float(likelihood.gaussian_log_likelihood(pred, theta, 1.0)) == pytest.approx(-11.0)
  assert float(likelihood.gaussian_log_likelihood(pred, theta, 2.0)) == pytest.approx(-11.0 / 4)


def test_maximal_at_theta_and_symmetric():
  theta = {"w": jnp.arange(6.0).reshape(2, 3)}
  other = {"w": theta["w"] + 0.5}
  assert float(likelihood.gaussian_log_likelihood(theta, theta, 0.3)) == 0.0
  a = likelihood.gaussian_log_likelihood(other, theta, 0.3)
  b = likelihood.gaussian_log_likelihood(theta, other, 0.3)
  assert float(a) < 0 and np.isclose(float(a), float(b))


def test_structure_mismatch_is_an_error():
  with pytest.raises(ValueError):
    likelihood.squared_distance({"a": jnp.ones(2)}, {"b": jnp.ones(2)})
