"""Meta-testing, Algorithm 3: adapt an initialisation to each unseen task.

    theta_0 = theta_init                                       (line 5)
    theta_t = theta_{t-1} - alpha grad L(theta_{t-1}, D_tr)     (lines 6-8, S steps)
    evaluate H_{theta_S} on D_test                              (line 9)

The algorithm for one task is algorithms.meta_test_task (lines 5-8: algorithms.adapt);
this module runs that very function for all M tasks in one compiled call, and every
method is meta-tested by it. The per-task function is vmapped over `batch_size` tasks
at a time by `lax.map`, which bounds memory for large networks or many tasks. Each task
starts from the same theta_init and sees only its own support set, so nothing (batch
statistics included) passes between tasks.

Given a mesh (sharding.make_mesh, axis "tasks"), the task axis is split across
its devices: the M tasks are padded (with copies of real tasks) to
n_batches x global batch, the global batch a multiple of the device count, and
laid out as (n_batches, global batch) with the second axis sharded; `lax.map`
walks the batches and inside a batch each device adapts its own tasks. The
padding tasks' results are dropped.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dfl2l_jax import algorithms
from dfl2l_jax import sharding as sharding_lib
from dfl2l_jax.tasks import base as tasks_base


def _task_metric(theta_init, ep, *, data, lr, loss_fn, metric_fn, gather_fn, steps,
                 step_bound=0.0):
  """Algorithm 3 for one episode: adapt on its support set, score its query set."""
  support, query = gather_fn(ep, data)
  return algorithms.meta_test_task(theta_init, support, query, loss_fn=loss_fn,
                                   metric_fn=metric_fn, steps=steps, lr=lr,
                                   step_bound=step_bound)


@functools.partial(jax.jit, static_argnames=("loss_fn", "metric_fn", "gather_fn", "steps",
                                             "batch_size", "step_bound"))
def _meta_test(theta_init, episodes, data, lr, *, loss_fn, metric_fn, gather_fn, steps,
               batch_size, step_bound=0.0):
  one_task = functools.partial(_task_metric, theta_init, data=data, lr=lr, loss_fn=loss_fn,
                               metric_fn=metric_fn, gather_fn=gather_fn, steps=steps,
                               step_bound=step_bound)
  return jax.lax.map(one_task, episodes, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("loss_fn", "metric_fn", "gather_fn", "steps",
                                             "n_tasks", "step_bound"))
def _meta_test_sharded(theta_init, batches, data, lr, *, loss_fn, metric_fn, gather_fn, steps,
                       n_tasks, step_bound=0.0):
  """batches: episodes laid out (n_batches, global batch, ...), axis 1 sharded."""
  one_task = functools.partial(_task_metric, theta_init, data=data, lr=lr, loss_fn=loss_fn,
                               metric_fn=metric_fn, gather_fn=gather_fn, steps=steps,
                               step_bound=step_bound)
  per_task = jax.lax.map(jax.vmap(one_task), batches)
  return per_task.reshape(-1)[:n_tasks]


def meta_test(theta_init, episodes, *, loss_fn, metric_fn, steps, lr, batch_size,
              gather_fn=None, data=None, mesh=None, step_bound=0.0):
  """Algorithm 3 for all tasks of `episodes`; returns the per-task metric (numpy).

  Args:
    theta_init: the initialisation (a parameter pytree of one network).
    episodes: dict of arrays with leading axis M (tasks). Only the keys that
      `gather_fn` reads are sent to the device.
    loss_fn: `(params, batch) -> scalar` adaptation loss.
    metric_fn: `(params, query, support) -> scalar` reported metric.
    steps: S, adaptation steps.
    lr: alpha, adaptation learning rate.
    batch_size: tasks vmapped together inside `lax.map`.
    gather_fn: `(episode, data) -> (support, query)`; default: the episode
      holds support_x, support_y, query_x, query_y.
    data: arrays shared by all episodes (e.g. the test images).
    mesh: a 1-D mesh (sharding.make_mesh) whose devices split the tasks; the
      batch is rounded up to a multiple of its device count. None: one device.
    step_bound: 0 for fixed-rate SGD; c in (0, 2) bounds each step by c / lambda_max
      (see algorithms.adapt).
  """
  if gather_fn is None:
    gather_fn = tasks_base.gather_arrays
  if mesh is not None:
    return _meta_test_on_mesh(theta_init, episodes, loss_fn=loss_fn, metric_fn=metric_fn,
                              steps=steps, lr=lr, batch_size=batch_size,
                              gather_fn=gather_fn, data=data, mesh=mesh,
                              step_bound=step_bound)
  eps = {k: jnp.asarray(v) for k, v in episodes.items() if k in device_keys(episodes)}
  n_tasks = jax.tree.leaves(eps)[0].shape[0]
  per_task = _meta_test(theta_init, eps, data, jnp.float32(lr), loss_fn=loss_fn,
                        metric_fn=metric_fn, gather_fn=gather_fn, steps=int(steps),
                        batch_size=int(min(batch_size, n_tasks)),
                        **_bound_kwarg(step_bound))
  return np.asarray(jax.device_get(per_task), np.float64)


def task_layout(n_tasks, batch_size, num_devices):
  """(n_batches, global batch): the padded layout of n_tasks on num_devices devices."""
  per_device = -(-min(batch_size, n_tasks) // num_devices)
  global_batch = per_device * num_devices
  return -(-n_tasks // global_batch), global_batch


def _bound_kwarg(step_bound):
  """The compiled functions get `step_bound` only when it is set, so that fixed-rate runs
  hit exactly the compiled program (and cache entries) they always did."""
  return {"step_bound": float(step_bound)} if step_bound else {}


def _tasks_on_mesh(episodes, batch_size, mesh):
  """(episodes laid out (n_batches, global batch, ...) with axis 1 sharded, n_tasks).

  The tasks are padded with copies of real ones to fill the last batch; each process
  builds only its own devices' tasks.
  """
  eps = {k: np.asarray(v) for k, v in episodes.items() if k in device_keys(episodes)}
  n_tasks = next(iter(eps.values())).shape[0]
  n_batches, global_batch = task_layout(n_tasks, batch_size, sharding_lib.num_shards(mesh))
  eps = sharding_lib.pad_rows(eps, n_batches * global_batch)
  eps = {k: v.reshape((n_batches, global_batch) + v.shape[1:]) for k, v in eps.items()}
  sharding = NamedSharding(mesh, P(None, sharding_lib.axis_of(mesh)))
  eps = {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
         for k, v in eps.items()}
  return eps, n_tasks


def _meta_test_on_mesh(theta_init, episodes, *, loss_fn, metric_fn, steps, lr, batch_size,
                       gather_fn, data, mesh, step_bound=0.0):
  eps, n_tasks = _tasks_on_mesh(episodes, batch_size, mesh)
  per_task = _meta_test_sharded(
      sharding_lib.put_replicated(theta_init, mesh), eps,
      sharding_lib.put_replicated(data, mesh), jnp.float32(lr), loss_fn=loss_fn,
      metric_fn=metric_fn, gather_fn=gather_fn, steps=int(steps), n_tasks=n_tasks,
      **_bound_kwarg(step_bound))
  return np.asarray(sharding_lib.to_host(per_task), np.float64)


@functools.partial(jax.jit, static_argnames=("score", "gather_fn", "batch_size"))
def _learner_test(state, episodes, data, *, score, gather_fn, batch_size):
  def one_task(ep):
    support, query = gather_fn(ep, data)
    return score(state, support, query)
  return jax.lax.map(one_task, episodes, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("score", "gather_fn", "n_tasks"))
def _learner_test_sharded(state, batches, data, *, score, gather_fn, n_tasks):
  def one_task(ep):
    support, query = gather_fn(ep, data)
    return score(state, support, query)
  return jax.lax.map(jax.vmap(one_task), batches).reshape(-1)[:n_tasks]


def score_learner(learner, episodes, *, batch_size, gather_fn=None, data=None, mesh=None):
  """The meta-test of a `methods.base.Learner`: its score on every task of `episodes`.

  The same tasks, batching and sharding as `meta_test`; the learner sees each task's
  support set and is scored on its query set. Returns the per-task metric (numpy).
  """
  gather_fn = gather_fn or tasks_base.gather_arrays
  eps = {k: np.asarray(v) for k, v in episodes.items() if k in device_keys(episodes)}
  n_tasks = next(iter(eps.values())).shape[0]
  if mesh is None:
    per_task = _learner_test(learner.state, eps, data, score=learner.score,
                             gather_fn=gather_fn, batch_size=int(min(batch_size, n_tasks)))
    return np.asarray(jax.device_get(per_task), np.float64)
  eps, n_tasks = _tasks_on_mesh(episodes, batch_size, mesh)
  per_task = _learner_test_sharded(
      sharding_lib.put_replicated(learner.state, mesh), eps,
      sharding_lib.put_replicated(data, mesh), score=learner.score, gather_fn=gather_fn,
      n_tasks=n_tasks)
  return np.asarray(sharding_lib.to_host(per_task), np.float64)


def adaptation_cost(steps, n_support, n_query, step_bound=0.0):
  """Per-task test-time cost of Algorithm 3 for one initialisation: S full-batch steps on
  the support set (a forward and a backward pass per example), then one forward pass per
  query example (and per support example, which give networks with BatchNorm their
  statistics). A bounded step (`step_bound`) adds a Hessian-vector product per step,
  counted as one more forward and backward pass, and algorithms.POWER_INIT_STEPS of them
  first."""
  passes = steps if not step_bound else 2 * steps + algorithms.POWER_INIT_STEPS
  return {"networks": 1, "forward": int(passes * n_support + n_query + n_support),
          "backward": int(passes * n_support)}


def device_keys(episodes):
  """Keys of numeric arrays with a leading task axis (drops plot-only extras)."""
  n = len(next(iter(episodes.values())))
  return [k for k, v in episodes.items()
          if isinstance(v, np.ndarray) and v.dtype != object and len(v) == n
          and not k.startswith("_")]
