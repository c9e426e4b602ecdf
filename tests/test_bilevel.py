import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl2l_jax import algorithms
from dfl2l_jax import bilevel
from dfl2l_jax import dro
from dfl2l_jax import hypernetwork
from tests import helpers

D = 4


def _setup(n_s=6, n_q=3, lr=0.05):
  zoo = helpers.toy_zoo(n_s + n_q, key=3)
  zoo_s = jax.tree.map(lambda x: x[:n_s], zoo)
  zoo_q = jax.tree.map(lambda x: x[n_s:], zoo)
  opt = optax.sgd(lr)
  state = bilevel.init_state(jax.random.key(0), helpers.tiny_template(), n_s, n_q, D, opt,
                             w_scale=0.3)
  return state, zoo_s, zoo_q, opt


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def _ll(phi, e, theta, sigma):
  return bilevel.batch_log_likelihood(phi, e[None], jax.tree.map(lambda x: x[None], theta),
                                      sigma)[0]


def test_one_step_matches_a_hand_written_first_order_update():
  state, zoo_s, zoo_q, opt = _setup()
  hp = bilevel.FusionHParams(sigma=1.3, gamma=2.0, inner_steps=1, inner_lr=0.02, dro_steps=2,
                             dro_lr=0.05, embed_lr=0.04)
  i, j = 2, 1
  th_i, th_j = _take(zoo_s, i), _take(zoo_q, j)
  new, _ = algorithms.step(state, _take(zoo_s, jnp.array([i])), jnp.array([i]),
                                _take(zoo_q, jnp.array([j])), jnp.array([j]), hp, opt)
  # Line 4 by hand.
  g_phi, g_e = jax.grad(_ll, argnums=(0, 1))(state.phi, state.emb_s[i], th_i, hp.sigma)
  phi_star = jax.tree.map(lambda p, g: p + hp.inner_lr * g, state.phi, g_phi)
  e_i = state.emb_s[i] + hp.embed_lr * g_e
  # Line 5.
  e_star = dro.dro_perturb(phi_star, state.emb_q[j], th_j, sigma=hp.sigma, gamma=hp.gamma,
                           steps=hp.dro_steps, lr=hp.dro_lr)
  # Line 6: gradient at (phi*, e*), applied to phi (first order).
  o_phi, o_e = jax.grad(_ll, argnums=(0, 1))(phi_star, e_star, th_j, hp.sigma)
  phi_new = jax.tree.map(lambda p, g: p + 0.05 * g, state.phi, o_phi)
  for a, b in zip(jax.tree.leaves(new.phi), jax.tree.leaves(phi_new)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.emb_s[i], e_i, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.emb_q[j], state.emb_q[j] + hp.embed_lr * o_e,
                             rtol=1e-5, atol=1e-6)
  # Rows of other models are untouched.
  others = [k for k in range(6) if k != i]
  np.testing.assert_array_equal(new.emb_s[np.array(others)], state.emb_s[np.array(others)])
  assert int(new.step) == 1


def test_keep_inner_update_applies_the_outer_step_to_phi_star():
  state, zoo_s, zoo_q, opt = _setup()
  args = (_take(zoo_s, jnp.array([0])), jnp.array([0]), _take(zoo_q, jnp.array([0])),
          jnp.array([0]))
  hp = bilevel.FusionHParams(inner_lr=0.1, embed_lr=0.0)
  fo, _ = algorithms.step(state, *args, hp, opt)
  kept, _ = algorithms.step(state, *args, bilevel.FusionHParams(
      inner_lr=0.1, embed_lr=0.0, keep_inner_update=True), opt)
  phi_star, _, _ = bilevel.inner_ascent(state.phi, state.emb_s[:1], args[0], hp)
  delta = jax.tree.map(lambda a, b: a - b, phi_star, state.phi)
  for k, f, d in zip(jax.tree.leaves(kept.phi), jax.tree.leaves(fo.phi), jax.tree.leaves(delta)):
    np.testing.assert_allclose(k, f + d, rtol=1e-5, atol=1e-6)


def test_without_dro_the_outer_gradient_is_taken_at_the_clean_embedding():
  state, zoo_s, zoo_q, opt = _setup()
  args = (_take(zoo_s, jnp.array([1])), jnp.array([1]), _take(zoo_q, jnp.array([2])),
          jnp.array([2]))
  no_dro, m = algorithms.step(state, *args, bilevel.FusionHParams(use_dro=False), opt)
  huge_gamma, _ = algorithms.step(
      state, *args, bilevel.FusionHParams(gamma=1e7, dro_lr=1e-9), opt)
  assert float(m["dro_shift"]) == 0.0
  for a, b in zip(jax.tree.leaves(no_dro.phi), jax.tree.leaves(huge_gamma.phi)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_meta_batch_equals_mean_of_per_model_gradients():
  state, zoo_s, zoo_q, opt = _setup()
  hp = bilevel.FusionHParams(inner_steps=1, inner_lr=0.0, embed_lr=0.0, use_dro=False)
  s = jnp.array([0, 1]); q = jnp.array([0, 2])
  both, _ = algorithms.step(state, _take(zoo_s, s), s, _take(zoo_q, q), q, hp, opt)
  singles = [algorithms.step(state, _take(zoo_s, s[k:k + 1]), s[k:k + 1],
                                  _take(zoo_q, q[k:k + 1]), q[k:k + 1], hp, opt)[0]
             for k in range(2)]
  for a, b, c in zip(*(jax.tree.leaves(x.phi) for x in [both] + singles)):
    np.testing.assert_allclose(a, (b + c) / 2, rtol=1e-5, atol=1e-6)


def test_meta_init_is_the_fusion_model_at_the_mean_embedding():
  state, _, _, _ = _setup()
  e_init = jnp.concatenate([state.emb_s, state.emb_q]).mean(0)
  want = hypernetwork.apply_hypernet(state.phi, e_init)
  for a, b in zip(jax.tree.leaves(bilevel.meta_init(state)), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_step_compiles_once():
  state, zoo_s, zoo_q, opt = _setup()
  hp = bilevel.FusionHParams()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(st, i, j):
    return algorithms.step(st, _take(zoo_s, i), i, _take(zoo_q, j), j, hp, opt)

  for k in range(3):
    state, _ = step(state, jnp.array([k]), jnp.array([k % 3]))
  assert int(state.step) == 3
