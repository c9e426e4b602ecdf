import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import hypernetwork
from tests import helpers


def test_output_matches_template_structure_and_shapes():
  template = helpers.tiny_template()
  phi = hypernetwork.init_hypernet(jax.random.key(0), template, embed_dim=7)
  out = hypernetwork.apply_hypernet(phi, jnp.ones(7))
  assert jax.tree.structure(out) == jax.tree.structure(template)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(template)):
    assert a.shape == b.shape
  assert hypernetwork.num_outputs(phi) == sum(x.size for x in jax.tree.leaves(template))


def test_is_affine_in_the_embedding():
  template = helpers.tiny_template()
  phi = hypernetwork.init_hypernet(jax.random.key(3), template, embed_dim=5)
  e1, e2 = jax.random.normal(jax.random.key(1), (2, 5))
  f = lambda e: hypernetwork.apply_hypernet(phi, e)
  mid = f(0.3 * e1 + 0.7 * e2)
  mix = jax.tree.map(lambda a, b: 0.3 * a + 0.7 * b, f(e1), f(e2))
  for a, b in zip(jax.tree.leaves(mid), jax.tree.leaves(mix)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_template_bias_init_reproduces_template_at_zero_embedding():
  template = helpers.tiny_template()
  phi = hypernetwork.init_hypernet(jax.random.key(0), template, 4, b_init="template")
  out = hypernetwork.apply_hypernet(phi, jnp.zeros(4))
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(template)):
    np.testing.assert_array_equal(a, b)
