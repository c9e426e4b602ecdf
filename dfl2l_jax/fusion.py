"""The offline (Algorithm 1) and online (Algorithm 2) fusion loops.

Both loops repeat `bilevel.bilevel_step`; they differ in which meta-training
model each step sees:

- offline (Algorithm 1): E epochs of N steps (N = zoo size); each step samples
  meta-training models uniformly from S and validation models from Q (line 4-5
  "randomly sample");
- online (Algorithm 2): the meta-training models arrive one at a time, in a fixed
  order, and each is used in exactly one step. A chunk of the loop receives only
  the models that arrive during that chunk, so a step cannot see a model that
  arrived earlier: the loop body has no access to them.

A chunk of steps is one `lax.scan` inside one jit; `loops.run_chunked` drives the
chunks from Python (progress, metrics, checkpoints). The randomness of step t is
`fold_in(key, t)`, so results do not depend on where chunks are cut or on a
resume.
"""

import jax
import jax.numpy as jnp
import optax

from dfl2l_jax import bilevel


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def num_models(tree):
  return jax.tree.leaves(tree)[0].shape[0]


def make_offline_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                       meta_batch_size: int):
  """Returns jitted `chunk(state, zoo_s, zoo_q, key, length) -> (state, metrics)`.

  zoo_s / zoo_q are the S and Q parameter pytrees with a leading model axis;
  metrics are stacked over the chunk's steps.
  """

  def chunk(state, zoo_s, zoo_q, key, length):
    n_s, n_q = num_models(zoo_s), num_models(zoo_q)

    def body(st, _):
      k_s, k_q = jax.random.split(jax.random.fold_in(key, st.step))
      s_idx = jax.random.randint(k_s, (meta_batch_size,), 0, n_s)
      q_idx = jax.random.randint(k_q, (meta_batch_size,), 0, n_q)
      return bilevel.bilevel_step(st, _take(zoo_s, s_idx), s_idx,
                                  _take(zoo_q, q_idx), q_idx, hp, optimizer)

    return jax.lax.scan(body, state, None, length=length)

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)


def make_online_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                      meta_batch_size: int):
  """Returns jitted `chunk(state, arriving, zoo_q, key) -> (state, metrics)`.

  `arriving` holds the meta-training models that arrive during this chunk, in
  arrival order (leading axis = number of steps). Step t uses arrival t, whose
  embedding is row t of `state.emb_s`.
  """

  def chunk(state, arriving, zoo_q, key):
    n_q = num_models(zoo_q)

    def body(st, theta_t):
      q_idx = jax.random.randint(jax.random.fold_in(key, st.step),
                                 (meta_batch_size,), 0, n_q)
      theta_s = jax.tree.map(lambda x: x[None], theta_t)
      return bilevel.bilevel_step(st, theta_s, st.step[None], _take(zoo_q, q_idx),
                                  q_idx, hp, optimizer)

    return jax.lax.scan(body, state, arriving)

  return jax.jit(chunk, donate_argnums=0)


def make_mle_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                   meta_batch_size: int):
  """Returns jitted `chunk(state, zoo_s, zoo_q, key, length)`: the plain fit of Eq. (1).

  No bi-level split and no DRO: each step draws models uniformly from the whole
  zoo (S and Q together) and ascends their mean log-likelihood in phi (through
  `optimizer`) and their embeddings (rate embed_lr). The ablation `dfl2l_mle`.
  """

  def chunk(state, zoo_s, zoo_q, key, length):
    n_s = num_models(zoo_s)
    zoo = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), zoo_s, zoo_q)
    n = num_models(zoo)

    def body(st, _):
      idx = jax.random.randint(jax.random.fold_in(key, st.step), (meta_batch_size,), 0, n)
      emb = jnp.concatenate([st.emb_s, st.emb_q])
      ll, (g_phi, g_e) = jax.value_and_grad(bilevel.sum_log_likelihood, argnums=(0, 1))(
          st.phi, emb[idx], _take(zoo, idx), hp.sigma)
      neg = jax.tree.map(lambda g: -g / meta_batch_size, g_phi)
      updates, opt_state = optimizer.update(neg, st.opt_state, st.phi)
      emb = emb.at[idx].add(hp.embed_lr * g_e)
      new = bilevel.FusionState(phi=optax.apply_updates(st.phi, updates), emb_s=emb[:n_s],
                                emb_q=emb[n_s:], opt_state=opt_state, step=st.step + 1)
      return new, {"train_loglik": ll / meta_batch_size}

    return jax.lax.scan(body, state, None, length=length)

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)
