"""The vmapped ensemble trainer: N models of one architecture on N tasks at once.

Every array carries a leading "model" axis (parameters, optimizer state, task
descriptions, PRNG keys). One training step is the per-member step vmapped over
that axis; a chunk of steps is a `lax.scan`; the whole chunk is one jitted
program. Member m's batch at step t is drawn with `fold_in(member_key[m], t)`,
so a member trains exactly as it would alone with the same step function
(`make_member_trainer` does that, for tests and benchmarks).

With a mesh (sharding.make_mesh) the model axis is split across devices:
parameters, optimizer states, tasks and member keys are NamedSharding(mesh,
P("models")), the shared data is replicated, and each device trains its own
members. The number of members must then be a multiple of the device count
(zoo.train_zoo pads it, see sharding.pad_rows).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dfl2l_jax import sharding as sharding_lib


class EnsembleState(NamedTuple):
  params: Any          # leading axis: model
  opt_state: Any       # leading axis: model
  step: jax.Array      # int32 scalar


def make_member_step(loss_fn: Callable, optimizer: optax.GradientTransformation):
  """One SGD-family step of one member: (params, opt_state, batch) -> (..., loss)."""

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def init_ensemble(params, optimizer) -> EnsembleState:
  """Stacked params (leading model axis) -> an EnsembleState at step 0."""
  return EnsembleState(params=params, opt_state=jax.vmap(optimizer.init)(params),
                       step=jnp.zeros((), jnp.int32))


def state_shardings(mesh):
  """EnsembleState of shardings: members split across the mesh, the step replicated."""
  members = sharding_lib.leading(mesh)
  return EnsembleState(params=members, opt_state=members,
                       step=sharding_lib.replicated(mesh))


def put_state(state: EnsembleState, mesh) -> EnsembleState:
  """Places an EnsembleState (model axis a multiple of the devices) on the mesh."""
  return EnsembleState(params=sharding_lib.put_sharded(state.params, mesh),
                       opt_state=sharding_lib.put_sharded(state.opt_state, mesh),
                       step=sharding_lib.put_replicated(state.step, mesh))


def make_ensemble_chunk(member_step: Callable, batch_fn: Callable, member_loop: str = "vmap",
                        mesh=None):
  """Returns jitted `chunk(state, tasks, member_keys, data, length) -> (state, losses)`.

  Args:
    member_step: from `make_member_step`.
    batch_fn: `(task, key, data) -> batch` for one member; `task` is one slice
      of `tasks` along the model axis; `data` is shared by all members (for
      example the image array the tasks index into; None for the sinusoid).
    member_loop: "vmap" (all members at once), "map" (`lax.map`, one member
      after another inside the same compiled program) or "loop" (one step of one
      member per compiled call, members and steps looped from Python: no member axis
      and no compiled loop around the step, which XLA's CPU convolutions need to stay
      fast; one device only). Same results. On a
      mesh, "map" runs each device's own members one after another. Which is
      faster where: docs/implementation.md, "member_loop".
    mesh: a 1-D mesh (sharding.make_mesh) to split the members across, or None
      (no sharding constraints: one device). With a mesh, state, tasks and
      member_keys must have a model axis that is a multiple of the device count
      and live on the mesh (ensemble.put_state, sharding.put_sharded); the
      output state and losses keep that layout.

  losses has shape (length, n_models).
  """

  def one_member(params, opt_state, task, key, step, data):
    batch = batch_fn(task, jax.random.fold_in(key, step), data)
    return member_step(params, opt_state, batch)

  def chunk(state, tasks, member_keys, data, length):
    def body(st, _):
      if member_loop == "map":
        params, opt_state, loss = sharding_lib.sharded_map(
            lambda a: one_member(*a, st.step, data),
            (st.params, st.opt_state, tasks, member_keys), mesh)
      else:
        params, opt_state, loss = jax.vmap(one_member, in_axes=(0, 0, 0, 0, None, None))(
            st.params, st.opt_state, tasks, member_keys, st.step, data)
      return EnsembleState(params, opt_state, st.step + 1), loss

    return jax.lax.scan(body, state, None, length=length)

  if member_loop not in ("vmap", "map", "loop"):
    raise ValueError(f"member_loop must be 'vmap', 'map' or 'loop', got {member_loop!r}")
  if member_loop == "loop":
    if mesh is not None and sharding_lib.num_shards(mesh) > 1:
      raise ValueError("member_loop 'loop' runs on one device; use 'vmap' or 'map' on a mesh")
    one_step = jax.jit(one_member)  # one member, one step: no member axis, no loop

    def looped(state, tasks, member_keys, data, length):
      row = lambda tree, m: jax.tree.map(lambda x: x[m], tree)
      params, opt_states, losses = [], [], []
      for m in range(member_keys.shape[0]):
        p, o, task, loss = row(state.params, m), row(state.opt_state, m), row(tasks, m), []
        for t in range(length):
          p, o, l = one_step(p, o, task, member_keys[m], state.step + t, data)
          loss.append(l)
        params.append(p)
        opt_states.append(o)
        losses.append(jnp.stack(loss))
      stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
      return (EnsembleState(stack(params), stack(opt_states), state.step + length),
              jnp.stack(losses, axis=1))
    return looped
  if mesh is None:
    return jax.jit(chunk, static_argnames="length", donate_argnums=0)
  members = sharding_lib.leading(mesh)
  jitted = jax.jit(
      chunk, static_argnums=4, donate_argnums=0,
      in_shardings=(state_shardings(mesh), members, members,
                    sharding_lib.replicated(mesh)),
      out_shardings=(state_shardings(mesh),
                     NamedSharding(mesh, P(None, sharding_lib.axis_of(mesh)))))

  def sharded_chunk(state, tasks, member_keys, data, length):
    return jitted(state, tasks, member_keys, data, length)  # in_shardings: no kwargs.

  return sharded_chunk


def make_member_trainer(member_step: Callable, batch_fn: Callable):
  """Jitted `train(params, opt_state, task, key, data, step0, length)` for ONE member.

  The same per-member step as the ensemble, scanned over steps: training the
  members one after another with it is the sequential baseline.
  """

  def train(params, opt_state, task, key, data, step0, length):
    def body(carry, t):
      p, o = carry
      batch = batch_fn(task, jax.random.fold_in(key, t), data)
      p, o, loss = member_step(p, o, batch)
      return (p, o), loss

    (params, opt_state), losses = jax.lax.scan(
        body, (params, opt_state), step0 + jnp.arange(length))
    return params, opt_state, losses

  return jax.jit(train, static_argnames="length")
