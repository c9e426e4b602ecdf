"""Algorithms 1, 2 and 3 of the paper, as the paper states them: the code every run executes.

Each algorithm is a loop over one step, and each step is written here once:

- `step`: one bi-level DRO step, Algorithm 1 lines 4-6 (Algorithm 2 lines 3-5);
- `sample_s_and_q`, `sample_models`: which models step t sees (Alg. 1 lines 4-5, Alg. 2
  line 4);
- `adapt`: Algorithm 3 lines 5-8, S gradient steps on a task's support set; its rate is
  the paper's fixed alpha or, as a named variant, bounded below the stability edge.

`offline_dfl2l`, `online_dfl2l` and `meta_test_task` are the three algorithms in their
plainest form: one step at a time, on the whole embedding tables, one device. The runs
execute the same `step`, draws and `adapt` inside faster wrappers: fusion.make_offline_chunk
and make_online_chunk scan `step` over the draws of `sample_*` in compiled chunks, on a
working set of the embedding tables, sharded across devices; adaptation.meta_test maps
`meta_test_task` over all test tasks, batched and sharded. So a change made here changes
every run, and tests/test_algorithms.py checks both that the wrappers give the numbers of
the plain forms and that a changed step reaches them.

The randomness of step t is `fold_in(key, t)`, t counted from `state.step`, so a state
resumed at step t continues exactly where it stopped, wherever the chunks are cut.
"""

import functools
import math

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from dfl2l_jax import bilevel
from dfl2l_jax import dro


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def _num_models(tree):
  return jax.tree.leaves(tree)[0].shape[0]


def sample_models(key, t, n, meta_batch_size):
  """Step t's `meta_batch_size` models of a pool of n: uniform, with replacement."""
  return jax.random.randint(jax.random.fold_in(key, t), (meta_batch_size,), 0, n)


def sample_s_and_q(key, t, n_s, n_q, meta_batch_size):
  """Step t's models of S (line 4) and of Q (line 5): uniform, with replacement."""
  k_s, k_q = jax.random.split(jax.random.fold_in(key, t))
  return (jax.random.randint(k_s, (meta_batch_size,), 0, n_s),
          jax.random.randint(k_q, (meta_batch_size,), 0, n_q))


def step(state: bilevel.FusionState, theta_s, s_rows, theta_q, q_rows,
         hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation):
  """One step of Algorithm 1 lines 4-6 (Algorithm 2 lines 3-5), first order (bilevel.py).

  Args:
    state: the current FusionState.
    theta_s: pretrained parameters of the meta-training batch (leading axis B_s).
    s_rows: (B_s,) int rows of `state.emb_s` for those models.
    theta_q: pretrained parameters of the validation batch (leading axis B_q).
    q_rows: (B_q,) int rows of `state.emb_q`.
    hp: static hyperparameters.
    optimizer: optax transformation for phi (the paper: SGD).

  Returns:
    (new state, dict of scalar metrics).
  """
  # Line 4: K ascent steps on the meta-training likelihood, from phi -> phi*.
  e_s = state.emb_s[s_rows]
  phi_star, e_s_new, inner_ll = bilevel.inner_ascent(state.phi, e_s, theta_s, hp)

  # Line 5: K descent steps on Eq. (8) in e' -> the worst-case embeddings e* under phi*.
  e_q = state.emb_q[q_rows]
  if hp.use_dro:
    e_star = dro.dro_perturb_batch(phi_star, e_q, theta_q, sigma=hp.sigma,
                                   gamma=hp.gamma, steps=hp.dro_steps, lr=hp.dro_lr)
  else:
    e_star = e_q

  # Line 6: ascend log P(theta_j | f_phi*(e*)) in phi, the gradient taken at (phi*, e*).
  batch_q = e_q.shape[0]
  robust_ll, (g_phi, g_e) = jax.value_and_grad(bilevel.sum_log_likelihood, argnums=(0, 1))(
      phi_star, e_star, theta_q, hp.sigma)
  neg_g = jax.tree.map(lambda g: -g / batch_q, g_phi)  # optax minimises
  base = phi_star if hp.keep_inner_update else state.phi
  updates, opt_state = optimizer.update(neg_g, state.opt_state, base)
  phi = optax.apply_updates(base, updates)

  emb_s = state.emb_s.at[s_rows].add(e_s_new - e_s)
  emb_q = state.emb_q
  if hp.learn_val_embeddings:
    emb_q = emb_q.at[q_rows].add(hp.embed_lr * g_e)

  metrics = {
      "train_loglik": inner_ll,
      "val_loglik_robust": robust_ll / batch_q,
      "dro_shift": jnp.mean(jnp.sqrt(jnp.sum(jnp.square(e_star - e_q), -1))),
  }
  new_state = bilevel.FusionState(phi=phi, emb_s=emb_s, emb_q=emb_q, opt_state=opt_state,
                                  step=state.step + 1)
  return new_state, metrics


@functools.partial(jax.jit, static_argnames=("epochs", "hp", "optimizer", "meta_batch_size"))
def offline_dfl2l(state, zoo_s, zoo_q, key, *, epochs, hp, optimizer, meta_batch_size=1):
  """Algorithm 1 (offline DRO model fusion): E_N epochs of N steps from `state`.

  N = |S| + |Q|, the zoo size (lines 2-3). Each step (lines 4-6, `step`):
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
    hp, optimizer: see `step`; meta_batch_size: see above.

  Returns:
    (final state, metrics stacked over the steps).
  """
  n_s, n_q = _num_models(zoo_s), _num_models(zoo_q)

  def one_step(state, t):
    i, j = sample_s_and_q(key, t, n_s, n_q, meta_batch_size)        # lines 4-5: sample
    return step(state, _take(zoo_s, i), i, _take(zoo_q, j), j, hp, optimizer)  # lines 4-6

  # Lines 2-3: for q = 1..E_N, for t = 1..N (t counted on from the state's step).
  return jax.lax.scan(one_step, state, state.step + jnp.arange(epochs * (n_s + n_q)))


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

  def one_step(state, arrival):
    t, theta_t = arrival
    j = sample_models(key, t, n_q, meta_batch_size)                               # line 4
    return step(state, _take(theta_t, None), t[None], _take(zoo_q, j), j, hp, optimizer)

  ts = state.step + jnp.arange(_num_models(arrivals))
  return jax.lax.scan(one_step, state, (ts, arrivals))


POWER_INIT_STEPS = 20  # power-iteration steps for lambda_0 before the first bounded step


def fixed_rate(loss, lr):
  """The paper's rate: alpha at every step.

  A rate rule of `adapt`: `(init, rate)`, init(w) -> carry and rate(w, carry) ->
  (gradient of `loss` at w, the step's rate, carry); w the parameters as `adapt` carries
  them, loss(w) the support loss.
  """
  grad = jax.grad(loss)
  return (lambda w: (), lambda w, carry: (grad(w), lr, carry))


def bounded_rate(loss, lr, step_bound):
  """alpha_t = min(alpha, c / lambda_t), c = `step_bound` in (0, 2), lambda_t the top
  Hessian eigenvalue (in magnitude) of the support loss at theta_{t-1}.

  lambda_t is tracked by one warm-started power-iteration step per step (POWER_INIT_STEPS
  at the start), a Hessian-vector product that gives the gradient too. Equal to the fixed
  rate wherever alpha lambda_t <= c, and never past the stability edge 2 / lambda_t, where
  plain gradient descent turns chaotic and the adapted network (so a reported mean)
  depends on float rounding. Why and how much: docs/method.md, "Meta-test (Algorithm 3)".
  A rate rule of `adapt` (see fixed_rate) on the parameters as one flat vector w; its
  carry is the power-iteration vector.
  """
  grad = jax.grad(loss)

  def power(w, v):
    """(gradient at w, next power-iteration vector, |lambda| estimate): one jvp of grad."""
    g, hv = jax.jvp(grad, (w,), (v,))
    lam = jnp.linalg.norm(hv)
    return g, hv / (lam + 1e-30), lam

  def init(w):
    v = jnp.full_like(w, 1.0 / math.sqrt(w.size))
    return jax.lax.scan(lambda v, _: (power(w, v)[1], None), v, None,
                        length=POWER_INIT_STEPS)[0]

  def rate(w, v):
    g, v, lam = power(w, v)
    return g, jnp.minimum(lr, step_bound / (lam + 1e-30)), v

  return init, rate


def adapt(theta_init, support, loss_fn, steps, lr, step_bound=0.0):
  """Algorithm 3 lines 5-8 for one task: S gradient steps on its support set D_i^tr.

    line 5:    theta_0 = theta_init
    lines 6-8: theta_t = theta_{t-1} - alpha_t grad L(theta_{t-1}, D_i^tr),  t = 1..S

  `step_bound` = 0: alpha_t = alpha, the paper's fixed rate (`fixed_rate`); c in (0, 2):
  alpha_t capped below the stability edge (`bounded_rate`, the sinusoid default), which
  works on the parameters as one flat vector.
  """
  if step_bound:
    w, unravel = ravel_pytree(theta_init)
    loss = lambda w: loss_fn(unravel(w), support)
    init, rate = bounded_rate(loss, lr, step_bound)
  else:
    w, unravel = theta_init, lambda w: w
    init, rate = fixed_rate(lambda w: loss_fn(w, support), lr)

  def sgd_step(carry, _):
    w, rate_carry = carry
    g, alpha, rate_carry = rate(w, rate_carry)
    return (jax.tree.map(lambda p, gp: p - alpha * gp, w, g), rate_carry), None

  (w, _), _ = jax.lax.scan(sgd_step, (w, init(w)), None, length=steps)
  return unravel(w)


def meta_test_task(theta_init, support, query, *, loss_fn, metric_fn, steps, lr,
                   step_bound=0.0):
  """Algorithm 3 (meta-testing) for one task T_i, lines 5-9: `adapt`, then

    line 9:    evaluate H_{theta_S} on D_i^test

  theta_init comes from lines 2-3 (Eqs. 9-10, `bilevel.meta_init`) for DFL2L, and
  from each baseline's own rule for the others; every method is meta-tested this way
  (`adaptation.meta_test` runs this function for all M tasks at once).

  Args:
    theta_init: parameter pytree of one network.
    support, query: D_i^tr and D_i^test (whatever loss_fn and metric_fn read).
    loss_fn: `(params, batch) -> scalar`, L.
    metric_fn: `(params, query, support) -> scalar`, the reported metric (the support
      set is passed for networks that take BatchNorm statistics from it).
    steps, lr, step_bound: S, alpha and the rate rule (see `adapt`).
  """
  theta = adapt(theta_init, support, loss_fn, steps, lr, step_bound)
  return metric_fn(theta, query, support)
