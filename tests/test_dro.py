import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from dfl2l_jax import dro
from dfl2l_jax import hypernetwork
from tests import helpers

D = 6


def _setup(seed=0, w_scale=0.3):
  template = helpers.tiny_template()
  phi = hypernetwork.init_hypernet(jax.random.key(seed), template, D, w_scale=w_scale)
  phi["b"] = jax.tree.map(lambda b: b + 0.1, phi["b"])
  theta = jax.tree.map(lambda x: x[0], helpers.toy_zoo(1, key=seed))
  e = jax.random.normal(jax.random.key(seed + 1), (D,))
  return phi, e, theta


def _flatten_linear(phi, theta):
  """f_phi(e) = A e + c in flattened parameter space, and theta flattened."""
  a = jnp.concatenate([w.T for w in jax.tree.leaves(phi["w"])], 0)
  c = jnp.concatenate([b.ravel() for b in jax.tree.leaves(phi["b"])])
  t = jnp.concatenate([x.ravel() for x in jax.tree.leaves(theta)])
  return a, c, t


def test_scan_reaches_the_closed_form_minimiser_of_the_quadratic():
  # Linear f_phi: Eq. (8) is quadratic in e', minimised where
  # (gamma I - A^T A / sigma^2) e' = gamma e + A^T (c - theta) / sigma^2.
  phi, e, theta = _setup()
  sigma, gamma = 1.5, 2.0
  a, c, t = _flatten_linear(phi, theta)
  hessian_half = gamma * jnp.eye(D) - a.T @ a / sigma**2
  assert float(jnp.linalg.eigvalsh(hessian_half).min()) > 0.1  # strictly convex
  closed = jnp.linalg.solve(hessian_half, gamma * e + a.T @ (c - t) / sigma**2)
  got = dro.dro_perturb(phi, e, theta, sigma=sigma, gamma=gamma, steps=400, lr=0.05)
  np.testing.assert_allclose(got, closed, rtol=1e-4, atol=1e-4)
  assert float(jnp.linalg.norm(closed - e)) > 0.05  # the perturbation is not trivial


def test_the_perturbation_lowers_the_likelihood_and_the_objective():
  phi, e, theta = _setup()
  e_star = dro.dro_perturb(phi, e, theta, sigma=1.0, gamma=2.0, steps=20, lr=0.05)
  obj = lambda x: dro.dro_objective(x, e, phi, theta, 1.0, 2.0)
  assert float(obj(e_star)) < float(obj(e))
  ll = lambda x: dro.dro_objective(x, e, phi, theta, 1.0, 0.0)
  assert float(ll(e_star)) < float(ll(e))


def test_large_gamma_leaves_the_embedding_in_place():
  phi, e, theta = _setup()
  e_star = dro.dro_perturb(phi, e, theta, sigma=1.0, gamma=1e6, steps=5, lr=1e-7)
  np.testing.assert_allclose(e_star, e, atol=1e-4)
  # And zero steps is the identity for any gamma.
  np.testing.assert_array_equal(
      dro.dro_perturb(phi, e, theta, sigma=1.0, gamma=0.1, steps=0, lr=0.1), e)


def test_scan_equals_unrolled_gradient_steps():
  phi, e, theta = _setup()
  kw = dict(sigma=1.0, gamma=0.7, lr=0.03)
  got = dro.dro_perturb(phi, e, theta, steps=4, **kw)
  x = e
  g = jax.grad(dro.dro_objective)
  for _ in range(4):
    x = x - kw["lr"] * g(x, e, phi, theta, kw["sigma"], kw["gamma"])
  np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6)


def test_vmap_over_validation_models_equals_a_python_loop():
  phi, _, _ = _setup()
  zoo = helpers.toy_zoo(5, key=7)
  es = jax.random.normal(jax.random.key(9), (5, D))
  kw = dict(sigma=1.0, gamma=0.5, steps=3, lr=0.05)
  batched = jax.jit(lambda p, e, t: dro.dro_perturb_batch(p, e, t, **kw))(phi, es, zoo)
  for i in range(5):
    one = dro.dro_perturb(phi, es[i], jax.tree.map(lambda x: x[i], zoo), **kw)
    np.testing.assert_allclose(batched[i], one, rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences():
  phi, e, theta = _setup(w_scale=0.2)
  f = lambda x, base: dro.dro_objective(x, base, phi, theta, 1.0, 0.5)
  check_grads(f, (e + 0.1, e), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  # Through the whole scanned inner minimisation, w.r.t. the starting embedding.
  g = lambda base: jnp.sum(dro.dro_perturb(phi, base, theta, sigma=1.0, gamma=0.5,
                                           steps=3, lr=0.05) ** 2)
  check_grads(g, (e,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_compiles_once_for_many_calls():
  phi, e, theta = _setup()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(p, x, t):
    return dro.dro_perturb(p, x, t, sigma=1.0, gamma=1.0, steps=2, lr=0.1)

  for i in range(3):
    f(phi, e + i, theta).block_until_ready()


def test_one_step_from_e_does_not_depend_on_gamma():
  # The transport cost's gradient 2 gamma (e' - e) vanishes at the start e' = e,
  # so with K = 1 (the paper's setting) e* = e - lr * grad log P(theta | f(e)).
  phi, e, theta = _setup()
  ll_grad = jax.grad(lambda x: dro.dro_objective(x, e, phi, theta, 1.0, 0.0))(e)
  for gamma in (0.0, 0.5, 100.0):
    e_star = dro.dro_perturb(phi, e, theta, sigma=1.0, gamma=gamma, steps=1, lr=0.1)
    np.testing.assert_allclose(e_star, e - 0.1 * ll_grad, rtol=1e-6, atol=1e-7)
  two = [dro.dro_perturb(phi, e, theta, sigma=1.0, gamma=g, steps=2, lr=0.1) for g in (0.5, 5.0)]
  assert not np.allclose(two[0], two[1])
