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

Working set: the models a chunk's steps will draw are known before the chunk
runs (their indices depend only on the key and the step), so the chunk gathers
their embedding rows once into a small working table, runs its steps on it and
scatters the rows back once at the end. A step then never touches the N-row
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

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from dfl2l_jax import bilevel
from dfl2l_jax import sharding as sharding_lib


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def num_models(tree):
  return jax.tree.leaves(tree)[0].shape[0]


def _shard_state(state, mesh):
  """emb_s and emb_q padded and split across the mesh; phi and the rest replicated."""
  if mesh is None:
    return state
  return state._replace(emb_s=sharding_lib.shard_rows(state.emb_s, mesh),
                        emb_q=sharding_lib.shard_rows(state.emb_q, mesh),
                        phi=sharding_lib.constrain(state.phi, mesh, P()))


def _unshard_state(state, n_s, n_q, mesh):
  """Cuts the padding rows off the embeddings; the state leaves replicated.

  A replicated output matches the replicated input `place_state` makes, so the
  chunk compiles once, not again for its own output's layout.
  """
  state = state._replace(emb_s=state.emb_s[:n_s], emb_q=state.emb_q[:n_q])
  return sharding_lib.constrain(state, mesh, P())


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


def _draw_rows(key, steps, meta_batch_size, n):
  """(len(steps), meta_batch_size) model indices in [0, n): step t's from fold_in(key, t)."""
  return jax.vmap(lambda t: jax.random.randint(jax.random.fold_in(key, t),
                                               (meta_batch_size,), 0, n))(steps)


def _gather_rows(table, rows):
  return jnp.take(table, rows, axis=0, mode="clip")


def _scatter_rows(table, rows, values):
  return table.at[rows].set(values, mode="drop")


def make_offline_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                       meta_batch_size: int, mesh=None):
  """Returns jitted `chunk(state, zoo_s, zoo_q, key, length) -> (state, metrics)`.

  zoo_s / zoo_q are the S and Q parameter pytrees with a leading model axis;
  metrics are stacked over the chunk's steps. `mesh`: split the model axes
  across its devices (see the module docstring); None: no constraints.
  """

  def chunk(state, zoo_s, zoo_q, key, length):
    n_s, n_q = num_models(zoo_s), num_models(zoo_q)
    zoo_s = sharding_lib.shard_rows(zoo_s, mesh)
    zoo_q = sharding_lib.shard_rows(zoo_q, mesh)
    state = _shard_state(state, mesh)

    def draw(t):
      k_s, k_q = jax.random.split(jax.random.fold_in(key, t))
      # Real rows only: the padding of the sharded arrays is never drawn.
      return (jax.random.randint(k_s, (meta_batch_size,), 0, n_s),
              jax.random.randint(k_q, (meta_batch_size,), 0, n_q))

    s_all, q_all = jax.vmap(draw)(state.step + jnp.arange(length))
    rows_s, slots_s = _working_rows(s_all, n_s)
    rows_q, slots_q = _working_rows(q_all, n_q)

    def body(st, xs):
      s_idx, q_idx, s_slot, q_slot = xs
      return bilevel.bilevel_step(st, _take(zoo_s, s_idx), s_slot,
                                  _take(zoo_q, q_idx), q_slot, hp, optimizer)

    work = state._replace(emb_s=_gather_rows(state.emb_s, rows_s),
                          emb_q=_gather_rows(state.emb_q, rows_q))
    work, metrics = jax.lax.scan(body, work, (s_all, q_all, slots_s, slots_q))
    state = work._replace(emb_s=_scatter_rows(state.emb_s, rows_s, work.emb_s),
                          emb_q=_scatter_rows(state.emb_q, rows_q, work.emb_q))
    return _unshard_state(state, n_s, n_q, mesh), metrics

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)


def make_online_chunk(hp: bilevel.FusionHParams, optimizer: optax.GradientTransformation,
                      meta_batch_size: int, mesh=None):
  """Returns jitted `chunk(state, arriving, zoo_q, key) -> (state, metrics)`.

  `arriving` holds the meta-training models that arrive during this chunk, in
  arrival order (leading axis = number of steps). Step t uses arrival t, whose
  embedding is row t of `state.emb_s`. `mesh`: split zoo_q and the embeddings
  across its devices (the arrivals are scanned over, one per step).
  """

  def chunk(state, arriving, zoo_q, key):
    n_s, n_q = state.emb_s.shape[0], num_models(zoo_q)
    length = num_models(arriving)
    if length > n_s:
      raise ValueError(f"{length} models arrive in one chunk but the state has embeddings "
                       f"for only {n_s} meta-training models")
    zoo_q = sharding_lib.shard_rows(zoo_q, mesh)
    state = _shard_state(state, mesh)

    steps = state.step + jnp.arange(length)
    q_all = _draw_rows(key, steps, meta_batch_size, n_q)
    rows_q, slots_q = _working_rows(q_all, n_q)

    def body(st, xs):
      theta_t, q_idx, q_slot, s_slot = xs
      theta_s = jax.tree.map(lambda x: x[None], theta_t)
      return bilevel.bilevel_step(st, theta_s, s_slot[None], _take(zoo_q, q_idx),
                                  q_slot, hp, optimizer)

    # The arrivals of this chunk own the embedding rows [step, step + length).
    rows_s = steps
    work = state._replace(emb_s=_gather_rows(state.emb_s, rows_s),
                          emb_q=_gather_rows(state.emb_q, rows_q))
    work, metrics = jax.lax.scan(body, work, (arriving, q_all, slots_q, jnp.arange(length)))
    state = work._replace(
        emb_s=_scatter_rows(state.emb_s, rows_s, work.emb_s),
        emb_q=_scatter_rows(state.emb_q, rows_q, work.emb_q))
    return _unshard_state(state, n_s, n_q, mesh), metrics

  return jax.jit(chunk, donate_argnums=0)


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
    emb = sharding_lib.shard_rows(jnp.concatenate([state.emb_s, state.emb_q]), mesh)
    phi = sharding_lib.constrain(state.phi, mesh, P())

    # Real rows only: the padding of the sharded arrays is never drawn.
    steps = state.step + jnp.arange(length)
    idx_all = _draw_rows(key, steps, meta_batch_size, n)
    rows, slots_all = _working_rows(idx_all, n)

    def body(carry, xs):
      phi, work, opt_state, step = carry
      idx, slots = xs
      ll, (g_phi, g_e) = jax.value_and_grad(bilevel.sum_log_likelihood, argnums=(0, 1))(
          phi, work[slots], _take(zoo, idx), hp.sigma)
      neg = jax.tree.map(lambda g: -g / meta_batch_size, g_phi)
      updates, opt_state = optimizer.update(neg, opt_state, phi)
      work = work.at[slots].add(hp.embed_lr * g_e)
      return ((optax.apply_updates(phi, updates), work, opt_state, step + 1),
              {"train_loglik": ll / meta_batch_size})

    (phi, work, opt_state, step), metrics = jax.lax.scan(
        body, (phi, _gather_rows(emb, rows), state.opt_state, state.step),
        (idx_all, slots_all))
    emb = _scatter_rows(emb, rows, work)
    new = bilevel.FusionState(phi=phi, emb_s=emb[:n_s], emb_q=emb[n_s:n],
                              opt_state=opt_state, step=step)
    return sharding_lib.constrain(new, mesh, P()), metrics

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)
