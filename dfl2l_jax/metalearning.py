"""MAML, first-order MAML and follow-the-meta-leader as pure functions.

Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017, Algorithm 2)
learns an initialisation theta such that a few SGD steps on a task's support
set give a low loss on that task's query set:

  inner (Eq. 1)   theta'_i = theta - alpha grad L_i(theta; D_i^tr)     (K steps)
  outer (Eq. 2)   theta   <- theta - beta grad_theta sum_i L_i(theta'_i; D_i^val)

The outer gradient differentiates through the inner steps (second order, the
Hessian-vector products of the support loss). First-order MAML (Finn et al.
2017, Section 5.2, "first-order approximation") drops them: with the inner
gradients wrapped in `stop_gradient`, d theta'/d theta = I and the outer
gradient is the query-loss gradient at the adapted parameters.

Follow the meta leader (FTML; Finn, Rajeswaran, Kakade and Levine, "Online
Meta-Learning", ICML 2019, Algorithms 1-2) runs the same meta-step in an online
setting: tasks arrive one at a time into a buffer, and after each arrival a
fixed number of meta-steps is taken on tasks sampled from the buffer of tasks
seen so far (`BufferTasks`).

Everything here takes the benchmark's `batch_fn` and `loss_fn`, so the same code
meta-learns the sinusoid MLP and the few-shot Conv4. The inner loop is a
fixed-length `lax.scan` (it is differentiated through), the task batch is a
`vmap` (or `lax.map`), and a chunk of meta-steps is one `lax.scan` inside one
jit with the state donated. Step t draws its tasks and data from
`fold_in(key, t)`, so results do not depend on where chunks are cut or on a
resume.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class MamlHParams:
  """Static hyperparameters of one meta-step (hashable: a jit static).

  Attributes:
    inner_steps: K, SGD steps of the inner adaptation (Eq. 1 applied K times).
    inner_lr: alpha, the inner SGD rate.
    first_order: drop the second-order terms (FO-MAML).
    meta_batch_size: tasks per meta-step.
    support_size: examples of a task's support batch (0: all `batch_fn` returns).
    query_size: examples of a task's query batch (0: all `batch_fn` returns).
    member_loop: "vmap" or "map": how the tasks of a meta-batch are run (the
      benchmark's choice; docs/implementation.md, "member_loop").
  """
  inner_steps: int = 1
  inner_lr: float = 0.01
  first_order: bool = False
  meta_batch_size: int = 1
  support_size: int = 0
  query_size: int = 0
  member_loop: str = "vmap"


class MamlState(NamedTuple):
  """What the meta-training loops carry. A pytree; checkpointed as is."""
  params: Any          # the meta-learned initialisation theta
  opt_state: Any       # optax state of the outer optimiser (Adam)
  step: jax.Array      # int32 scalar: meta-steps done


def init_state(params, optimizer: optax.GradientTransformation) -> MamlState:
  return MamlState(params=params, opt_state=optimizer.init(params),
                   step=jnp.zeros((), jnp.int32))


def inner_adapt(params, support, loss_fn: Callable, steps: int, lr: float,
                first_order: bool = False):
  """Eq. (1) of Finn et al. (2017) applied `steps` times: SGD on the support batch.

  A fixed-length `lax.scan`, differentiable in `params`. With `first_order`
  the inner gradients are constants for an outer derivative (FO-MAML), so
  d adapted / d params is the identity.

  Returns:
    (adapted params, support loss before each inner step, shape (steps,)).
  """
  value_and_grad = jax.value_and_grad(loss_fn)

  def body(p, _):
    loss, g = value_and_grad(p, support)
    if first_order:
      g = jax.lax.stop_gradient(g)
    return jax.tree.map(lambda x, gx: x - lr * gx, p, g), loss

  return jax.lax.scan(body, params, None, length=steps)


def maml_loss(params, support, query, loss_fn: Callable, steps: int, lr: float,
              first_order: bool = False):
  """One task's MAML objective: the query loss after inner adaptation (Eq. 2's summand).

  Returns:
    (query loss at the adapted params, support loss before adaptation).
  """
  adapted, support_losses = inner_adapt(params, support, loss_fn, steps, lr, first_order)
  return loss_fn(adapted, query), support_losses[0]


def meta_gradient(params, support, query, loss_fn: Callable, steps: int, lr: float,
                  first_order: bool = False):
  """The gradient of `maml_loss` w.r.t. the initialisation, for one task.

  Second order by default (through the inner steps); first order: the query
  gradient at the adapted parameters.

  Returns:
    ((query loss, pre-adaptation support loss), gradient pytree like params).
  """
  return jax.value_and_grad(maml_loss, has_aux=True)(
      params, support, query, loss_fn, steps, lr, first_order)


def batch_meta_gradient(params, supports, queries, loss_fn: Callable, hp: MamlHParams):
  """Eq. (2)'s gradient for a batch of tasks (leading axis of supports/queries).

  Returns (mean query loss, mean pre-adaptation support loss, mean gradient).
  The tasks run under `vmap`, or one after another under `lax.map` when
  `hp.member_loop == "map"` (same values).
  """
  def one(sq):
    return meta_gradient(params, sq[0], sq[1], loss_fn, hp.inner_steps, hp.inner_lr,
                         hp.first_order)

  if hp.member_loop == "map":
    (q_loss, s_loss), grads = jax.lax.map(one, (supports, queries))
  elif hp.member_loop == "vmap":
    (q_loss, s_loss), grads = jax.vmap(one)((supports, queries))
  else:
    raise ValueError(f"member_loop must be vmap or map, got {hp.member_loop!r}")
  return q_loss.mean(), s_loss.mean(), jax.tree.map(lambda g: g.mean(0), grads)


def _first(batch, size):
  return batch if size == 0 else jax.tree.map(lambda x: x[:size], batch)


def task_batches(task, key, data, batch_fn: Callable, support_size: int, query_size: int):
  """A support and a query batch of one task: two `batch_fn` draws with different keys.

  Each batch is cut to its first `support_size` / `query_size` examples (0:
  keep all); `batch_fn` draws its examples i.i.d., so the first k are a batch
  of k.
  """
  k_s, k_q = jax.random.split(key)
  return (_first(batch_fn(task, k_s, data), support_size),
          _first(batch_fn(task, k_q, data), query_size))


def meta_step(state: MamlState, tasks, data, key, *, index_fn: Callable, batch_fn: Callable,
              loss_fn: Callable, optimizer: optax.GradientTransformation, hp: MamlHParams):
  """One outer step (Finn et al. 2017, Algorithm 2, lines 3-10).

  Args:
    state: the MamlState before the step.
    tasks: task descriptions (what `batch_fn` reads) with a leading task axis.
    data: the benchmark's shared data (or None), passed to `batch_fn`.
    key: the loop key; this step uses `fold_in(key, state.step)`.
    index_fn: `(key, step) -> (meta_batch_size,) int` rows of `tasks` to use.
    batch_fn, loss_fn: the benchmark's.
    optimizer: the outer optimiser.
    hp: MamlHParams.

  Returns:
    (new state, metrics dict of scalars).
  """
  k_idx, k_data = jax.random.split(jax.random.fold_in(key, state.step))
  idx = index_fn(k_idx, state.step)
  chosen = jax.tree.map(lambda x: x[idx], tasks)
  keys = jax.random.split(k_data, hp.meta_batch_size)
  supports, queries = jax.vmap(
      lambda t, k: task_batches(t, k, data, batch_fn, hp.support_size, hp.query_size))(
          chosen, keys)
  q_loss, s_loss, grads = batch_meta_gradient(state.params, supports, queries, loss_fn, hp)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new = MamlState(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                  step=state.step + 1)
  return new, {"query_loss_after": q_loss, "support_loss_before": s_loss}


@dataclasses.dataclass(frozen=True)
class UniformTasks:
  """MAML's task sampler: `meta_batch_size` rows drawn uniformly, with replacement.

  A frozen dataclass (hashable by value), so compiled chunks can be reused.
  """
  num_tasks: int
  meta_batch_size: int

  def __call__(self, key, step):
    del step
    return jax.random.randint(key, (self.meta_batch_size,), 0, self.num_tasks)


def arrived(step, steps_per_arrival: int, num_tasks: int):
  """FTML's buffer size at meta-step `step`: task t (0-based) arrives before step
  t * steps_per_arrival, so steps [t * spa, (t + 1) * spa) see tasks 0..t."""
  return jnp.minimum(step // steps_per_arrival + 1, num_tasks)


@dataclasses.dataclass(frozen=True)
class BufferTasks:
  """FTML's task sampler: uniform over the buffer of tasks arrived so far.

  Rows index the tasks in arrival order; at step t only rows
  < `arrived(t, ...)` can be drawn (the paper's nu^t, taken uniform).
  """
  num_tasks: int
  meta_batch_size: int
  steps_per_arrival: int

  def __call__(self, key, step):
    n = arrived(step, self.steps_per_arrival, self.num_tasks)
    return jax.random.randint(key, (self.meta_batch_size,), 0, n)


def make_chunk(*, index_fn: Callable, batch_fn: Callable, loss_fn: Callable,
               optimizer: optax.GradientTransformation, hp: MamlHParams):
  """Returns jitted `chunk(state, tasks, data, key, length) -> (state, metrics)`.

  `length` meta-steps in one `lax.scan`; metrics are stacked over the steps.
  The state is donated; `length` is static (one compile per chunk length).
  """
  def chunk(state, tasks, data, key, length):
    body = lambda st, _: meta_step(st, tasks, data, key, index_fn=index_fn,
                                   batch_fn=batch_fn, loss_fn=loss_fn,
                                   optimizer=optimizer, hp=hp)
    return jax.lax.scan(body, state, None, length=length)

  return jax.jit(chunk, static_argnames="length", donate_argnums=0)
