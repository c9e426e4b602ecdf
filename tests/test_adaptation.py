import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import adaptation
from dfl2l_jax import tasks
from tests import helpers


def _bench():
  return tasks.get_benchmark(helpers.smoke_config())


def test_adapt_equals_unrolled_sgd():
  bench = _bench()
  params = bench.init_params(jax.random.key(0))
  eps = bench.make_episodes(5)
  support = {"x": eps["support_x"][0], "y": eps["support_y"][0]}
  got = adaptation.adapt(params, support, bench.loss_fn, steps=4, lr=0.01)
  p = params
  for _ in range(4):
    g = jax.grad(bench.loss_fn)(p, support)
    p = jax.tree.map(lambda x, gx: x - 0.01 * gx, p, g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_meta_test_equals_a_loop_over_tasks(batch_size):
  bench = _bench()
  params = bench.init_params(jax.random.key(1))
  eps = bench.make_episodes(5)
  got = adaptation.meta_test(params, eps, loss_fn=bench.loss_fn, metric_fn=bench.metric_fn,
                             steps=3, lr=0.01, batch_size=batch_size)
  assert got.shape == (eps["support_x"].shape[0],)
  for m in range(got.shape[0]):
    adapted = adaptation.adapt(params, {"x": eps["support_x"][m], "y": eps["support_y"][m]},
                               bench.loss_fn, 3, 0.01)
    want = bench.metric_fn(adapted, {"x": eps["query_x"][m], "y": eps["query_y"][m]}, None)
    assert got[m] == pytest.approx(float(want), rel=1e-4)


def test_adaptation_fits_the_support_set():
  bench = _bench()
  params = bench.init_params(jax.random.key(2))
  eps = bench.make_episodes(10)
  support = {"x": jnp.asarray(eps["support_x"][0]), "y": jnp.asarray(eps["support_y"][0])}
  before = float(bench.loss_fn(params, support))
  after = float(bench.loss_fn(adaptation.adapt(params, support, bench.loss_fn, 200, 0.005),
                              support))
  assert after < 0.5 * before


def test_mean_ci95():
  mean, ci = adaptation.mean_ci95([1.0, 2.0, 3.0, 4.0])
  assert mean == pytest.approx(2.5)
  assert ci == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
  assert adaptation.mean_ci95([5.0]) == (5.0, 0.0)


def test_episodes_are_reproducible_and_nested():
  bench = _bench()
  a, b = bench.make_episodes(5), bench.make_episodes(5)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  ten = bench.make_episodes(10)
  # The 5-shot support set is the start of the 10-shot one; the query set is shared.
  np.testing.assert_array_equal(ten["support_x"][:, :5], a["support_x"])
  np.testing.assert_array_equal(ten["query_x"], a["query_x"])
  # Support and query points are disjoint draws.
  assert not np.isin(a["support_x"], a["query_x"]).any()
