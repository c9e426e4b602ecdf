"""Meta-testing, Algorithm 3: adapt an initialisation to each unseen task.

    theta_0 = theta_init                                       (line 5)
    theta_t = theta_{t-1} - alpha grad L(theta_{t-1}, D_tr)     (lines 6-8, S steps)
    evaluate H_{theta_S} on D_test                              (line 9)

Every method is meta-tested by this same procedure. All M tasks run in one
compiled call: the per-task function is vmapped over `batch_size` tasks at a
time by `lax.map`, which bounds memory for large networks or many tasks.
Each task starts from the same theta_init and sees only its own support set,
so nothing (batch statistics included) passes between tasks.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax.tasks import base as tasks_base


def adapt(params, support, loss_fn, steps, lr):
  """S steps of SGD with rate alpha on one task's support set (lines 5-8)."""
  grad_fn = jax.grad(loss_fn)

  def body(p, _):
    g = grad_fn(p, support)
    return jax.tree.map(lambda x, gx: x - lr * gx, p, g), None

  params, _ = jax.lax.scan(body, params, None, length=steps)
  return params


@functools.partial(jax.jit, static_argnames=("loss_fn", "metric_fn", "gather_fn", "steps",
                                             "batch_size"))
def _meta_test(theta_init, episodes, data, lr, *, loss_fn, metric_fn, gather_fn, steps,
               batch_size):
  def one_task(ep):
    support, query = gather_fn(ep, data)
    adapted = adapt(theta_init, support, loss_fn, steps, lr)
    return metric_fn(adapted, query, support)

  return jax.lax.map(one_task, episodes, batch_size=batch_size)


def meta_test(theta_init, episodes, *, loss_fn, metric_fn, steps, lr, batch_size,
              gather_fn=None, data=None):
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
  """
  if gather_fn is None:
    gather_fn = tasks_base.gather_arrays
  eps = {k: jnp.asarray(v) for k, v in episodes.items() if k in _device_keys(episodes)}
  n_tasks = jax.tree.leaves(eps)[0].shape[0]
  per_task = _meta_test(theta_init, eps, data, jnp.float32(lr), loss_fn=loss_fn,
                        metric_fn=metric_fn, gather_fn=gather_fn, steps=int(steps),
                        batch_size=int(min(batch_size, n_tasks)))
  return np.asarray(jax.device_get(per_task), np.float64)


def _device_keys(episodes):
  """Keys of numeric arrays with a leading task axis (drops plot-only extras)."""
  n = len(next(iter(episodes.values())))
  return [k for k, v in episodes.items()
          if isinstance(v, np.ndarray) and v.dtype != object and len(v) == n
          and not k.startswith("_")]


def mean_ci95(values):
  """Mean and half-width of the normal-approximation 95% confidence interval."""
  values = np.asarray(values, np.float64)
  n = values.size
  std = values.std(ddof=1) if n > 1 else 0.0
  return float(values.mean()), float(1.96 * std / math.sqrt(max(n, 1)))
