"""Algorithms 1 and 2 as the runs execute them: compiled chunks of `algorithms.step`.

Both loops repeat `algorithms.step`, the step as algorithms.py states it; they
differ in which meta-training model each step sees:

- offline (Algorithm 1): E epochs of N steps (N = zoo size); step t samples
  meta-training models from S and validation models from Q with
  `algorithms.sample_s_and_q` (lines 4-5 "randomly sample");
- online (Algorithm 2): the meta-training models arrive one at a time, in a fixed
  order, and each is used in exactly one step; Q is sampled with
  `algorithms.sample_models`. A chunk of the loop receives only the models that
  arrive during that chunk, so a step cannot see a model that arrived earlier: the
  loop body has no access to them.

A chunk of steps is one `lax.scan` inside one jit; `loops.run_chunked` drives the
chunks from Python (progress, metrics, checkpoints). The randomness of step t is
`fold_in(key, t)`, so results do not depend on where chunks are cut or on a
resume. What this module adds to algorithms.py is speed only (the working set and
the sharding below); tests/test_algorithms.py checks that these chunks give the
numbers of algorithms.offline_dfl2l and online_dfl2l, and that a changed
`algorithms.step` changes them.

Working set: the models a chunk's steps will draw are known before the chunk
runs (their indices depend only on the key and the step), so the chunk gathers
their embedding rows once into a small working table, runs its steps on it and
scatters the rows back once at the end (`_scan_on_working_set`, shared by the
three chunk builders). A step then never touches the N-row
embedding tables, whose copy XLA would otherwise make every step of the loop
(results/performance.md, "Scaling"): the cost of a step does not grow with the
zoo. The arithmetic is the same as updating the full tables in place.

Sharding: given a mesh (sharding.make_mesh, axis "models"), the zoo arrays and
the embeddings emb_s / emb_q are split across devices along their model axis
inside the compiled chunk, each padded to a multiple of the device count by
copies of real rows (sharding.shard_rows). A step gathers its one (or
meta_batch_size) S and Q rows from the sharded arrays; indices are drawn from
the real models only, so padding rows never enter a likelihood, and the state
returned holds exactly the real rows (its checkpoints do not depend on the
device count).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from dfl2l_jax import algorithms
from dfl2l_jax import bilevel
from dfl2l_jax import sharding as sharding_lib


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def num_models(tree):
  return jax.tree.leaves(tree)[0].shape[0]


def place_state(state, mesh):
  """A fusion state placed as the chunks return it (replicated); no-op without a mesh."""
  return state if mesh is None else sharding_lib.put_replicated(state, mesh)


def _working_rows(idx, n):
  """The distinct rows of `idx` and, for each entry, its slot among them.

  Static shape: the rows are padded with `n` (past the last real row), which
  gathers are clipped on and scatters drop, so padding slots are never used.
  """
  flat = idx.reshape(-1)
  rows, slots = jnp.unique(flat, size=flat.size, fill_value=n, return_inverse=True)
  return rows, slots.reshape(idx.shape)


def _gather_rows(table, rows):
  return jnp.take(table, rows, axis=0, mode="clip")


def _scatter_rows(table, rows, values):
  return table.at[rows].set(values, mode="drop")


def _scan_on_working_set(state, drawn, body, xs, mesh):
  """A chunk's steps run by `lax.scan` on the rows of the state's tables they use.

  Shards the state, gathers the drawn rows of each table into a working table,
  scans `body` over the steps, scatters the rows back and unshards (see the
  module docstring).

  Args:
    state: a NamedTuple with a field `phi` (replicated across the mesh) and the
      tables named in `drawn` (one row per model, padded and split across the mesh).
    drawn: {field: (steps, batch) int rows of that table each step uses}; the
      rows are real ones (below the table's length).
    body: `(state, (x, slots)) -> (state, metrics)`: one step on the working
      tables; `slots` maps each field of `drawn` to the step's (batch,) rows of
      its working table.
    xs: the per-step inputs of `body`, leading axis = steps.
    mesh: see make_offline_chunk.

  Returns:
    (state holding exactly the real rows, replicated; metrics stacked over the steps).
  """
  n = {f: getattr(state, f).shape[0] for f in drawn}
  state = state._replace(phi=sharding_lib.constrain(state.phi, mesh, P()),
                         **{f: sharding_lib.shard_rows(getattr(state, f), mesh) for f in drawn})
  working = {f: _working_rows(idx, n[f]) for f, idx in drawn.items()}
  work = state._replace(**{f: _gather_rows(getattr(state, f), rows)
                           for f, (rows, _) in working.items()})
  work, metrics = jax.lax.scan(body, work, (xs, {f: slots for f, (_, slots) in working.items()}))
  state = work._replace(**{f: _scatter_rows(getattr(state, f), rows, getattr(work, f))[:n[f]]
                           for f, (rows, _) in working.items()})
  # Replicated, as `place_state` makes the input: the chunk compiles once, not again
  # for its own output's layout.
  return sharding_lib.constrain(state, mesh, P()), metrics


def make_offline_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                       meta_batch_size: int, mesh=None):
  """Returns jitted `chunk(state, zoo_s, zoo_q, key, length) -> (state, metrics)`.

  zoo_s / zoo_q are the S and Q parameter pytrees with a leading model axis;
  metrics are stacked over the chunk's steps. `mesh`: split the model axes
  across its devices (see the module docstring); None: no constraints.
  The plain form: algorithms.offline_dfl2l.
  """

  def chunk(state, zoo_s, zoo_q, key, length):
    n_s, n_q = num_models(zoo_s), num_models(zoo_q)
    zoo_s = sharding_lib.shard_rows(zoo_s, mesh)
    zoo_q = sharding_lib.shard_rows(zoo_q, mesh)

    # Every step's draws first (real rows only: the padding is never drawn).
    s_all, q_all = jax.vmap(lambda t: algorithms.sample_s_and_q(key, t, n_s, n_q,
                                                                meta_batch_size))(
        state.step + jnp.arange(length))

    def body(st, xs):
      (s_idx, q_idx), slots = xs
      return algorithms.step(st, _take(zoo_s, s_idx), slots["emb_s"], _take(zoo_q, q_idx),
                             slots["emb_q"], hp, optimizer)

    return _scan_on_working_set(state, {"emb_s": s_all, "emb_q": q_all}, body,
                                (s_all, q_all), mesh)

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)


def make_online_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                      meta_batch_size: int, mesh=None):
  """Returns jitted `chunk(state, arriving, zoo_q, key) -> (state, metrics)`.

  `arriving` holds the meta-training models that arrive during this chunk, in
  arrival order (leading axis = number of steps). Step t uses arrival t, whose
  embedding is row t of `state.emb_s`. `mesh`: split zoo_q and the embeddings
  across its devices (the arrivals are scanned over, one per step).
  The plain form: algorithms.online_dfl2l.
  """

  def chunk(state, arriving, zoo_q, key):
    n_s, n_q = state.emb_s.shape[0], num_models(zoo_q)
    length = num_models(arriving)
    if length > n_s:
      raise ValueError(f"{length} models arrive in one chunk but the state has embeddings "
                       f"for only {n_s} meta-training models")
    zoo_q = sharding_lib.shard_rows(zoo_q, mesh)

    steps = state.step + jnp.arange(length)
    q_all = jax.vmap(lambda t: algorithms.sample_models(key, t, n_q, meta_batch_size))(steps)

    def body(st, xs):
      (theta_t, q_idx), slots = xs
      theta_s = jax.tree.map(lambda x: x[None], theta_t)
      return algorithms.step(st, theta_s, slots["emb_s"], _take(zoo_q, q_idx),
                             slots["emb_q"], hp, optimizer)

    # The arrivals of this chunk own the embedding rows [step, step + length), one each.
    return _scan_on_working_set(state, {"emb_s": steps[:, None], "emb_q": q_all}, body,
                                (arriving, q_all), mesh)

  return jax.jit(chunk, donate_argnums=0)


class _JoinedState(NamedTuple):
  """The MLE chunk's state: S and Q embeddings in one table (the leaves in the
  order of FusionState's)."""
  phi: Any
  emb: jax.Array
  opt_state: Any
  step: jax.Array


def make_mle_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                   meta_batch_size: int, mesh=None):
  """Returns jitted `chunk(state, zoo_s, zoo_q, key, length)`: the plain fit of Eq. (1).

  No bi-level split and no DRO: each step draws models uniformly from the whole
  zoo (S and Q together) and ascends their mean log-likelihood in phi (through
  `optimizer`) and their embeddings (rate embed_lr). The ablation `dfl2l_mle`.
  `mesh`: split the joined zoo and embeddings across its devices.
  """

  def chunk(state, zoo_s, zoo_q, key, length):
    n_s = num_models(zoo_s)
    zoo = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), zoo_s, zoo_q)
    n = num_models(zoo)
    zoo = sharding_lib.shard_rows(zoo, mesh)
    joined = _JoinedState(phi=state.phi, emb=jnp.concatenate([state.emb_s, state.emb_q]),
                          opt_state=state.opt_state, step=state.step)

    # Real rows only: the padding of the sharded arrays is never drawn.
    idx_all = jax.vmap(lambda t: algorithms.sample_models(key, t, n, meta_batch_size))(
        state.step + jnp.arange(length))

    def body(st, xs):
      idx, slots = xs
      slots = slots["emb"]
      ll, (g_phi, g_e) = jax.value_and_grad(bilevel.sum_log_likelihood, argnums=(0, 1))(
          st.phi, st.emb[slots], _take(zoo, idx), hp.sigma)
      neg = jax.tree.map(lambda g: -g / meta_batch_size, g_phi)
      updates, opt_state = optimizer.update(neg, st.opt_state, st.phi)
      emb = st.emb.at[slots].add(hp.embed_lr * g_e)
      return (_JoinedState(optax.apply_updates(st.phi, updates), emb, opt_state, st.step + 1),
              {"train_loglik": ll / meta_batch_size})

    joined, metrics = _scan_on_working_set(joined, {"emb": idx_all}, body, idx_all, mesh)
    new = bilevel.FusionState(phi=joined.phi, emb_s=joined.emb[:n_s], emb_q=joined.emb[n_s:],
                              opt_state=joined.opt_state, step=joined.step)
    return sharding_lib.constrain(new, mesh, P()), metrics

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)
