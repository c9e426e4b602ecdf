"""Algorithms 1, 2 and 3 of the paper, as the paper states them.

These are the reference forms: one step at a time, on the whole embedding tables,
one device. The library runs the fast forms of the same computations
(fusion.make_offline_chunk / make_online_chunk, chunked, on a working set of the
embedding tables and sharded across devices; adaptation.meta_test, all tasks
batched and sharded); tests/test_algorithms.py checks that they give the same
numbers as these functions.

The randomness of step t is `fold_in(key, t)`, t counted from `state.step`, as in
the fast forms, so a state resumed at step t continues exactly where it stopped.
"""

import functools

import jax
import jax.numpy as jnp

from dfl2l_jax import bilevel


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def _num_models(tree):
  return jax.tree.leaves(tree)[0].shape[0]


@functools.partial(jax.jit, static_argnames=("epochs", "hp", "optimizer", "meta_batch_size"))
def offline_dfl2l(state, zoo_s, zoo_q, key, *, epochs, hp, optimizer, meta_batch_size=1):
  """Algorithm 1 (offline DRO model fusion): E_N epochs of N steps from `state`.

  N = |S| + |Q|, the zoo size (lines 2-3). Each step (lines 4-6, `bilevel.bilevel_step`):
    line 4: sample theta_i from S; K ascent steps on log P(theta_i | f_phi(e_i)) -> phi*;
    line 5: sample theta_j from Q; K descent steps on
            log P(theta_j | f_phi*(e')) + gamma ||e_j - e'||^2 in e' -> e*  (Eq. 8);
    line 6: ascend log P(theta_j | f_phi*(e*)) in phi (first order).
  `meta_batch_size` models are sampled per line (the paper: 1), uniformly, with replacement.

  Args:
    state: a bilevel.FusionState (line 1: bilevel.init_state).
    zoo_s, zoo_q: parameter pytrees of S and Q, leading model axis.
    key: the loop's key; step t samples with fold_in(key, t).
    epochs: E_N.
    hp, optimizer: see bilevel.bilevel_step; meta_batch_size: see above.

  Returns:
    (final state, metrics stacked over the steps).
  """
  n_s, n_q = _num_models(zoo_s), _num_models(zoo_q)

  def step(state, t):
    k_s, k_q = jax.random.split(jax.random.fold_in(key, t))
    i = jax.random.randint(k_s, (meta_batch_size,), 0, n_s)  # line 4: sample from S
    j = jax.random.randint(k_q, (meta_batch_size,), 0, n_q)  # line 5: sample from Q
    return bilevel.bilevel_step(state, _take(zoo_s, i), i, _take(zoo_q, j), j,
                                hp, optimizer)               # lines 4-6

  # Lines 2-3: for q = 1..E_N, for t = 1..N (t counted on from the state's step).
  return jax.lax.scan(step, state, state.step + jnp.arange(epochs * (n_s + n_q)))


@functools.partial(jax.jit, static_argnames=("hp", "optimizer", "meta_batch_size"))
def online_dfl2l(state, arrivals, zoo_q, key, *, hp, optimizer, meta_batch_size=1):
  """Algorithm 2 (online DRO model fusion): one step per arriving model, in order.

  Step t (lines 3-5) sees only arrival t, theta_t, whose embedding is row t of
  `state.emb_s`; earlier arrivals are not available to it (the scan hands each
  step its own model only). Q is available throughout:
    line 3: K ascent steps on log P(theta_t | f_phi(e_t)) -> phi*;
    line 4: sample theta_j from Q; K descent steps on Eq. (8)'s objective in e' -> e*;
    line 5: ascend log P(theta_j | f_phi*(e*)) in phi (first order).

  Args:
    state: a bilevel.FusionState with a row of emb_s for every model of the sequence.
    arrivals: the models arriving from step `state.step` on, in arrival order
      (parameter pytree, leading axis = number of steps).
    zoo_q: parameter pytree of Q, leading model axis.
    key: the loop's key; step t samples Q with fold_in(key, t).

  Returns:
    (final state, metrics stacked over the steps).
  """
  n_q = _num_models(zoo_q)

  def step(state, arrival):
    t, theta_t = arrival
    j = jax.random.randint(jax.random.fold_in(key, t), (meta_batch_size,), 0, n_q)  # line 4
    return bilevel.bilevel_step(state, _take(theta_t, None), t[None], _take(zoo_q, j), j,
                                hp, optimizer)                                    # lines 3-5

  ts = state.step + jnp.arange(_num_models(arrivals))
  return jax.lax.scan(step, state, (ts, arrivals))


def meta_test_task(theta_init, support, query, *, loss_fn, metric_fn, steps, lr):
  """Algorithm 3 (meta-testing) for one task T_i, lines 5-9.

    line 5:    theta_0 = theta_init
    lines 6-8: theta_t = theta_{t-1} - alpha grad L(theta_{t-1}, D_i^tr),  t = 1..S
    line 9:    evaluate H_{theta_S} on D_i^test

  theta_init comes from lines 2-3 (Eqs. 9-10, `bilevel.meta_init`) for DFL2L, and
  from each baseline's own rule for the others; every method is meta-tested this way.

  Args:
    theta_init: parameter pytree of one network.
    support, query: D_i^tr and D_i^test (whatever loss_fn and metric_fn read).
    loss_fn: `(params, batch) -> scalar`, L.
    metric_fn: `(params, query, support) -> scalar`, the reported metric (the support
      set is passed for networks that take BatchNorm statistics from it).
    steps, lr: S and alpha.

  `adaptation.meta_test` runs this for all M tasks at once. With its `step_bound`
  set (the sinusoid default), each step's rate is also capped below the stability
  edge (docs/method.md, "Meta-test"); this function is the paper's fixed rate.
  """
  grad_fn = jax.grad(loss_fn)

  def sgd_step(theta, _):
    g = grad_fn(theta, support)
    return jax.tree.map(lambda p, gp: p - lr * gp, theta, g), None

  theta, _ = jax.lax.scan(sgd_step, theta_init, None, length=steps)
  return metric_fn(theta, query, support)
