"""The sinusoid regression benchmark of the paper, Section 5.2.

Tasks are g(x) = a sin(x + beta) + b with a ~ U[0.1, 5], beta ~ U[0, 2 pi],
b ~ U[0, 3] and x in [-5, 5]. Zoo models are MLPs (two hidden layers of 50)
trained on fresh samples of their own task; test tasks give `shots` support
points and `query_points` held-out points; the metric is the query MSE.

Randomness: zoo tasks come from `np.random.default_rng([seed, 0])`; test task m
from `np.random.default_rng([seed, 1, m])`, so the test tasks of a seed do not
depend on the zoo or on how many tasks are drawn.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax import models
from dfl2l_jax.tasks import base

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, 2 * np.pi)
SHIFT = (0.0, 3.0)
DOMAIN = (-5.0, 5.0)


def sample_task_params(rng, n):
  """n tasks (a, beta, b) as float32 arrays of shape (n,)."""
  return {
      "a": rng.uniform(*AMPLITUDE, size=n).astype(np.float32),
      "beta": rng.uniform(*PHASE, size=n).astype(np.float32),
      "b": rng.uniform(*SHIFT, size=n).astype(np.float32),
  }


def sinusoid(task, x):
  """g(x) = a sin(x + beta) + b for one task (dict of scalars)."""
  return task["a"] * jnp.sin(x + task["beta"]) + task["b"]


def mse(pred, y):
  return jnp.mean(jnp.square(pred - y))


def make_test_episodes(seed, num_tasks, shots, num_points, query_points):
  """Test tasks with `shots` support and `query_points` held-out query points.

  Each task draws `num_points` inputs once; the support set is the first
  `shots` of them and the query set the last `query_points`, so the query set
  of a task is the same at every shot count.
  """
  tasks, sx, sy, qx, qy = [], [], [], [], []
  for m in range(num_tasks):
    rng = np.random.default_rng([seed, 1, m])
    t = {k: v[0] for k, v in sample_task_params(rng, 1).items()}
    x = rng.uniform(*DOMAIN, size=(num_points, 1)).astype(np.float32)
    y = np.asarray(sinusoid(t, x), np.float32)
    tasks.append(t)
    sx.append(x[:shots]); sy.append(y[:shots])
    qx.append(x[num_points - query_points:]); qy.append(y[num_points - query_points:])
  return {
      "support_x": np.stack(sx), "support_y": np.stack(sy),
      "query_x": np.stack(qx), "query_y": np.stack(qy),
      "a": np.array([t["a"] for t in tasks]), "beta": np.array([t["beta"] for t in tasks]),
      "b": np.array([t["b"] for t in tasks]),
  }


def make_benchmark(config) -> base.Benchmark:
  net = models.MLP(hidden=tuple(config.model.hidden), out=1)
  zoo_tasks = sample_task_params(np.random.default_rng([config.seed, 0]),
                                 config.zoo.num_models)
  batch_size = config.zoo.batch_size

  def apply(params, x):
    return net.apply({"params": params}, x)

  def batch_fn(task, key, data):
    del data  # Fresh points of the task's function; no stored data.
    x = jax.random.uniform(key, (batch_size, 1), minval=DOMAIN[0], maxval=DOMAIN[1])
    return {"x": x, "y": sinusoid(task, x)}

  def loss_fn(params, batch):
    return mse(apply(params, batch["x"]), batch["y"])

  eval_x = jnp.linspace(*DOMAIN, 1000, dtype=jnp.float32)[:, None]

  def zoo_eval_fn(params, task, data):
    del data
    return mse(apply(params, eval_x), sinusoid(task, eval_x))

  mt = config.metatest
  return base.Benchmark(
      name="sinusoid", metric="mse", model=net,
      example_input=np.zeros((1, 1), np.float32), zoo_tasks=zoo_tasks,
      batch_fn=batch_fn, loss_fn=loss_fn, metric_fn=lambda p, query, support: loss_fn(p, query),
      zoo_eval_fn=zoo_eval_fn,
      make_episodes=functools.partial(make_test_episodes, config.seed, mt.num_tasks,
                                      num_points=mt.num_points,
                                      query_points=mt.query_points),
      points_available=mt.num_points - mt.query_points,
      spec={"benchmark": "sinusoid", "model": "MLP", "hidden": list(config.model.hidden),
            "amplitude": AMPLITUDE, "phase": PHASE, "shift": SHIFT, "domain": DOMAIN})
