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


def adapt(params, support, loss_fn, steps, lr):
  """S steps of SGD with rate alpha on one task's support set (lines 5-8)."""
  grad_fn = jax.grad(loss_fn)

  def body(p, _):
    g = grad_fn(p, support)
    return jax.tree.map(lambda x, gx: x - lr * gx, p, g), None

  params, _ = jax.lax.scan(body, params, None, length=steps)
  return params


@functools.partial(jax.jit, static_argnames=("loss_fn", "metric_fn", "steps", "batch_size"))
def _meta_test(theta_init, episodes, lr, *, loss_fn, metric_fn, steps, batch_size):
  def one_task(ep):
    adapted = adapt(theta_init, {"x": ep["support_x"], "y": ep["support_y"]},
                    loss_fn, steps, lr)
    return metric_fn(adapted, {"x": ep["query_x"], "y": ep["query_y"]})

  return jax.lax.map(one_task, episodes, batch_size=batch_size)


def meta_test(theta_init, episodes, *, loss_fn, metric_fn, steps, lr, batch_size):
  """Algorithm 3 for all tasks of `episodes`; returns the per-task metric (numpy).

  Args:
    theta_init: the initialisation (a parameter pytree of one network).
    episodes: dict with support_x, support_y, query_x, query_y, leading axis M.
    loss_fn: `(params, batch) -> scalar` adaptation loss.
    metric_fn: `(params, batch) -> scalar` reported metric on the query set.
    steps: S, adaptation steps.
    lr: alpha, adaptation learning rate.
    batch_size: tasks vmapped together inside `lax.map`.
  """
  keys = ("support_x", "support_y", "query_x", "query_y")
  eps = {k: jnp.asarray(episodes[k]) for k in keys}
  per_task = _meta_test(theta_init, eps, jnp.float32(lr), loss_fn=loss_fn,
                        metric_fn=metric_fn, steps=int(steps),
                        batch_size=int(min(batch_size, eps["support_x"].shape[0])))
  return np.asarray(jax.device_get(per_task), np.float64)


def mean_ci95(values):
  """Mean and half-width of the normal-approximation 95% confidence interval."""
  values = np.asarray(values, np.float64)
  n = values.size
  std = values.std(ddof=1) if n > 1 else 0.0
  return float(values.mean()), float(1.96 * std / math.sqrt(max(n, 1)))
