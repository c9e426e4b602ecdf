import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl2l_jax import bilevel
from dfl2l_jax import fusion
from tests import helpers

D = 4
N_S, N_Q = 8, 3


def _setup(lr=0.05):
  zoo = helpers.toy_zoo(N_S + N_Q, key=5, spread=0.5)
  zoo_s = jax.tree.map(lambda x: x[:N_S], zoo)
  zoo_q = jax.tree.map(lambda x: x[N_S:], zoo)
  opt = optax.sgd(lr)
  state = bilevel.init_state(jax.random.key(2), helpers.tiny_template(), N_S, N_Q, D, opt,
                             w_scale=0.1)
  return state, zoo_s, zoo_q, opt


def _val_loglik(state, zoo_q, sigma):
  return float(bilevel.batch_log_likelihood(state.phi, state.emb_q, zoo_q, sigma).mean())


HP = bilevel.FusionHParams(sigma=1.0, gamma=5.0, inner_lr=0.05, dro_lr=0.01, embed_lr=0.05)


def test_offline_loop_increases_the_validation_likelihood():
  state, zoo_s, zoo_q, opt = _setup()
  before = _val_loglik(state, zoo_q, HP.sigma)
  chunk = fusion.make_offline_chunk(HP, opt, meta_batch_size=2)
  state, metrics = chunk(state, zoo_s, zoo_q, jax.random.key(0), length=300)
  after = _val_loglik(state, zoo_q, HP.sigma)
  assert after > before + 0.5 * abs(before), (before, after)
  assert metrics["train_loglik"].shape == (300,)
  assert metrics["train_loglik"][-20:].mean() > metrics["train_loglik"][:20].mean()


def test_online_loop_increases_the_validation_likelihood():
  state, zoo_s, zoo_q, opt = _setup(lr=0.1)
  before = _val_loglik(state, zoo_q, HP.sigma)
  chunk = fusion.make_online_chunk(HP, opt, meta_batch_size=3)
  state, _ = chunk(state, zoo_s, zoo_q, jax.random.key(0))
  assert _val_loglik(state, zoo_q, HP.sigma) > before


def test_online_step_t_uses_arrival_t_only():
  state, zoo_s, zoo_q, opt = _setup()
  chunk = fusion.make_online_chunk(HP, opt, meta_batch_size=1)
  first3 = jax.tree.map(lambda x: x[:3], zoo_s)
  new, _ = chunk(jax.tree.map(jnp.copy, state), first3, zoo_q, jax.random.key(0))
  changed = np.any(np.asarray(new.emb_s) != np.asarray(state.emb_s), axis=1)
  np.testing.assert_array_equal(changed, [True] * 3 + [False] * (N_S - 3))
  assert int(new.step) == 3


def test_mle_fit_increases_the_likelihood_of_every_split():
  state, zoo_s, zoo_q, opt = _setup()
  before_s = float(bilevel.batch_log_likelihood(state.phi, state.emb_s, zoo_s, 1.0).mean())
  before_q = _val_loglik(state, zoo_q, 1.0)
  chunk = fusion.make_mle_chunk(HP, opt, meta_batch_size=2)
  state, metrics = chunk(state, zoo_s, zoo_q, jax.random.key(0), length=300)
  after_s = float(bilevel.batch_log_likelihood(state.phi, state.emb_s, zoo_s, 1.0).mean())
  assert after_s > before_s + 0.5 * abs(before_s)
  assert _val_loglik(state, zoo_q, 1.0) > before_q + 0.5 * abs(before_q)
  assert state.emb_s.shape == (N_S, D) and state.emb_q.shape == (N_Q, D)


def test_mle_chunk_equals_full_table_steps():
  """The working-set chunk (fusion.py) against Eq. (1)'s steps on the full tables."""
  state, zoo_s, zoo_q, _ = _setup()
  opt = optax.adam(0.01)
  state = bilevel.init_state(jax.random.key(2), helpers.tiny_template(), N_S, N_Q, D, opt,
                             w_scale=0.1)
  key, mb, n = jax.random.key(7), 3, N_S + N_Q
  chunk = fusion.make_mle_chunk(HP, opt, meta_batch_size=mb)
  got, metrics = chunk(jax.tree.map(jnp.copy, state), zoo_s, zoo_q, key, length=6)
  zoo = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), zoo_s, zoo_q)
  phi, emb, opt_state = state.phi, jnp.concatenate([state.emb_s, state.emb_q]), state.opt_state
  for t in range(6):
    idx = jax.random.randint(jax.random.fold_in(key, t), (mb,), 0, n)
    ll, (g_phi, g_e) = jax.value_and_grad(bilevel.sum_log_likelihood, argnums=(0, 1))(
        phi, emb[idx], jax.tree.map(lambda x: x[idx], zoo), HP.sigma)
    updates, opt_state = opt.update(jax.tree.map(lambda g: -g / mb, g_phi), opt_state, phi)
    phi = optax.apply_updates(phi, updates)
    emb = emb.at[idx].add(HP.embed_lr * g_e)  # a model drawn twice gets both updates.
    np.testing.assert_allclose(metrics["train_loglik"][t], ll / mb, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got.phi), jax.tree.leaves(phi)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.emb_s, emb[:N_S], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.emb_q, emb[N_S:], rtol=1e-5, atol=1e-6)
  assert int(got.step) == 6
