"""Tests of methods/merging.py: task arithmetic and TIES-Merging."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import pipeline
from dfl2l_jax import tasks
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import base
from dfl2l_jax.methods import merging
from tests import helpers


class _Writer:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def _tree(a, b):
  return {"a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def _close(x, y, **kw):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw),
               x, y)


# Three task vectors of 6 parameters (two leaves); density 0.5 keeps 3 per model.
TAUS = _tree([[1, -2, 0.5, 0.1], [-4, 1, 0.3, 0.2], [2, -1, -3, 0]],
             [[3, -0.2], [-0.1, 2], [0.5, -0.4]])


def test_ties_trim_elect_disjoint_mean_by_hand():
  trimmed = merging.ties_trim(TAUS, 0.5)
  # The top 3 magnitudes of each model, over both leaves together.
  _close(trimmed, _tree([[1, -2, 0, 0], [-4, 1, 0, 0], [2, -1, -3, 0]],
                        [[3, 0], [0, 2], [0, 0]]))
  signs = merging.ties_elect(trimmed)
  # Sums: a = [-1, -2, -3, 0], b = [3, 2].
  _close(signs, _tree([-1, -1, -1, 0], [1, 1]))
  merged = merging.ties_disjoint_mean(trimmed, signs)
  # a0: only -4 agrees; a1: mean(-2, -1); a2: -3; a3: nobody; b0: 3; b1: 2.
  _close(merged, _tree([-4, -1.5, -3, 0], [3, 2]))
  _close(merging.ties_merge(TAUS, 0.5), merged)


def test_ties_density_one_keeps_everything_and_per_vector_top_k():
  _close(merging.ties_trim(TAUS, 1.0), TAUS)
  kept = merging.ties_trim(TAUS, 1 / 6)  # one entry per model: its largest magnitude
  _close(kept, _tree([[0, 0, 0, 0], [-4, 0, 0, 0], [0, 0, -3, 0]], [[3, 0], [0, 0], [0, 0]]))


def test_task_arithmetic_at_one_over_s_is_the_mean_of_s():
  rng = np.random.default_rng(0)
  theta0 = _tree(rng.normal(size=(4,)), rng.normal(size=(2,)))
  models = jax.tree.map(lambda b: b[None] + jnp.asarray(rng.normal(size=(5,) + b.shape),
                                                        jnp.float32), theta0)
  out = merging.task_arithmetic(theta0, merging.task_vectors(models, theta0), 1 / 5)
  _close(out, jax.tree.map(lambda x: x.mean(0), models), rtol=1e-5, atol=1e-6)


def _ctx(config, zoo, n_q=4, writer=None, benchmark=None):
  n = jax.tree.leaves(zoo)[0].shape[0]
  return base.MethodContext(
      config=config, benchmark=benchmark, zoo=zoo, s_idx=np.arange(n_q, n),
      q_idx=np.arange(n_q), key=jax.random.key(0), writer=writer)


@pytest.fixture(scope="module")
def sinusoid():
  config = helpers.smoke_config()
  return config, tasks.get_benchmark(config)


def _zoo_around(config, benchmark, n, spread=0.3, offset=1.0, key=0):
  """Shared init theta_0 + a common task vector v + per-model noise: center = theta_0 + v."""
  theta0 = jax.tree.map(lambda x: x[0], zoo_lib.initial_params(config, benchmark))
  rng = np.random.default_rng(key)
  center = jax.tree.map(lambda b: b + offset * jnp.asarray(rng.normal(size=b.shape),
                                                           jnp.float32), theta0)
  zoo = jax.tree.map(lambda c: c[None] + spread * jnp.asarray(
      rng.normal(size=(n,) + c.shape), jnp.float32), center)
  return theta0, center, zoo


def test_task_arithmetic_method_reproduces_the_shared_base(sinusoid):
  config, benchmark = sinusoid
  config = helpers.override(config, task_arithmetic__scales=(1.0,))
  _, _, zoo = _zoo_around(config, benchmark, 12)
  ctx = _ctx(config, zoo, benchmark=benchmark)
  out = merging.task_arithmetic_init(ctx)
  # With scale 1, lambda = 1/|S|: exactly the mean of S, only if theta_0 is the true base.
  _close(out, jax.tree.map(lambda x: x.mean(0), ctx.zoo_s), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_merging_beats_a_random_init_on_a_toy_zoo(sinusoid, method):
  config, benchmark = sinusoid
  config = helpers.override(config, ties__density=0.5)
  theta0, center, zoo = _zoo_around(config, benchmark, 20)
  writer = _Writer()
  ctx = _ctx(config, zoo, writer=writer, benchmark=benchmark)
  fn = merging.task_arithmetic_init if method == "task_arithmetic" else merging.ties_init
  merged = fn(ctx)
  random_init = benchmark.init_params(jax.random.key(123))
  dist = lambda p: float(sum(jnp.sum((x - c) ** 2) for x, c in
                             zip(jax.tree.leaves(p), jax.tree.leaves(center))))
  assert dist(merged) < 0.2 * dist(random_init)
  assert dist(merged) < 0.2 * dist(theta0)
  # Every grid value was scored and logged, with the chosen lambda.
  (step, row), = writer.rows
  assert step == 0 and f"{method}/lambda" in row
  scales = config[method].scales
  assert {f"{method}/score_scale_{s:g}" for s in scales} <= set(row)


def test_lambda_selection_picks_the_known_minimiser(sinusoid):
  config, benchmark = sinusoid
  config = helpers.override(config, task_arithmetic__scales=(0.5, 1.0, 2.0, 3.0, 4.0))
  theta0 = {"w": jnp.zeros((6,), jnp.float32)}
  d = jnp.asarray([1.0, 2.0, 0.0, 0.0, 0.0, 0.0])
  # Q = 2 d +- e with e orthogonal to d: ||theta_0 + lam d - q||^2 is minimal at lam = 2.
  e = jnp.asarray([0.0, 0.0, 1.0, -2.0, 0.5, 0.0])
  zoo_q = {"w": jnp.stack([2 * d + e, 2 * d - e, 2 * d + 3 * e, 2 * d - 3 * e])}
  ctx = _ctx(config, zoo_q, n_q=4, writer=_Writer())
  ctx.s_idx = np.arange(4)
  scales = [0.5, 1.0, 2.0, 3.0, 4.0]
  lam, best, scores = merging.choose_scale(ctx, "task_arithmetic", theta0, {"w": d}, scales, scales)
  assert lam == 2.0 and best == 2
  # The score is Eq. (2)'s mean log-likelihood: -mean ||.||^2 / sigma^2.
  sigma = config.fusion.sigma
  want = [-np.mean([np.sum((s * np.asarray(d) - np.asarray(q)) ** 2) for q in zoo_q["w"]])
          / sigma ** 2 for s in scales]
  np.testing.assert_allclose(scores, want, rtol=1e-5)


def test_zoo_data_criterion_equals_a_loop_over_q(sinusoid):
  config, benchmark = sinusoid
  theta0, _, zoo = _zoo_around(config, benchmark, 10, spread=0.05, offset=0.1)
  direction = jax.tree.map(lambda x: x[4] - x[5], zoo)
  q_idx = np.arange(3)
  tasks_q = jax.tree.map(lambda x: jnp.asarray(x)[q_idx], benchmark.zoo_tasks)
  key = jax.random.key(7)
  lams = jnp.asarray([0.0, 0.5, 1.0])
  got = merging.make_zoo_data_score(benchmark, tasks_q, key)(theta0, direction, lams, None)
  keys = jax.random.split(key, 3)
  for lam, g in zip(lams, np.asarray(got)):
    cand = merging.scaled(theta0, direction, lam)
    losses = [benchmark.loss_fn(cand, benchmark.batch_fn(
        jax.tree.map(lambda x: x[i], tasks_q), keys[i], None)) for i in range(3)]
    np.testing.assert_allclose(g, -np.mean(losses), rtol=1e-5)
  cfg = helpers.override(config, ties__scale_criterion="zoo_data")
  ctx = _ctx(cfg, zoo, n_q=3, benchmark=benchmark)
  lam, best, scores = merging.choose_scale(ctx, "ties", theta0, direction, [0.0, 1.0], [0.0, 1.0])
  assert np.all(np.isfinite(scores)) and lam == [0.0, 1.0][int(np.argmax(scores))]


def test_no_shared_init_is_not_applicable(sinusoid):
  config, benchmark = sinusoid
  config = helpers.override(config, zoo__shared_init=False)
  _, _, zoo = _zoo_around(helpers.smoke_config(), benchmark, 8)
  for fn in (merging.task_arithmetic_init, merging.ties_init):
    with pytest.raises(NotApplicable, match="shared_init"):
      fn(_ctx(config, zoo, benchmark=benchmark))


def test_pipeline_writes_na_rows_without_a_shared_init(tmp_path):
  config = helpers.smoke_config(zoo__shared_init=False, methods="task_arithmetic,va",
                                zoo__steps=50, shots=(5,), metatest__num_tasks=4)
  pipeline.run(config, str(tmp_path), "offline")
  with open(os.path.join(tmp_path, "results.json")) as f:
    rows = json.load(f)["rows"]
  ta = [r for r in rows if r["method"] == "task_arithmetic"]
  va = [r for r in rows if r["method"] == "va"]
  assert len(ta) == len(va) == 1
  assert all("shared_init" in r["na"] and r["mean"] is None for r in ta)
  assert all("na" not in r and np.isfinite(r["mean"]) for r in va)


@pytest.mark.parametrize("section,field,value", [
    ("task_arithmetic", "scales", ()), ("task_arithmetic", "scales", (1.0, -1.0)),
    ("task_arithmetic", "scales", (0.0,)), ("task_arithmetic", "scales", (float("nan"),)),
    ("task_arithmetic", "scale_criterion", "test_loss"), ("ties", "scales", ()),
    ("ties", "density", 0.0), ("ties", "density", 1.5), ("ties", "density", -0.2),
    ("ties", "scale_criterion", "test_loss")])
def test_validate_names_the_bad_field(section, field, value):
  config = helpers.smoke_config(**{f"{section}__{field}": value})
  validate = {"task_arithmetic": merging.validate_task_arithmetic,
              "ties": merging.validate_ties}
  with pytest.raises(ConfigError, match=f"config.{section}.{field} must be"):
    validate[section](config)
  other = "ties" if section == "task_arithmetic" else "task_arithmetic"
  validate[other](config)  # each method validates only its own section


def test_validate_accepts_the_defaults():
  config = helpers.smoke_config()
  merging.validate_task_arithmetic(config)
  merging.validate_ties(config)
  merging.validate_ties(helpers.smoke_config(ties__density=1.0))
