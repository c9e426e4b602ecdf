"""Tests of methods/ot_fusion.py (`ota`): exact and Sinkhorn OT fusion."""

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dfl2l_jax import methods
from dfl2l_jax import models
from dfl2l_jax import permutations as perm_lib
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import ot_fusion
from tests import helpers
from tests.test_permutations import conv_case, forward, max_diff, mlp_case, moving_perms
from tests.test_permutations import random_params


def permuted_copies(params, n, seed, noise=0.0):
  """n copies of `params`, each with its own noise (std `noise`) and hidden permutation."""
  spec = perm_lib.spec_from_params(params)
  rng = np.random.default_rng(seed)
  zoo = jax.tree.map(
      lambda x: (x[None] + noise * rng.normal(size=(n,) + x.shape)).astype(np.float32), params)
  return spec, jax.device_get(perm_lib.apply_permutation_batched(
      spec, moving_perms(spec, seed, n), zoo))


def toy_problem(n=10, noise=0.1):
  """A true 1-16-16-1 MLP, a zoo of n permuted noisy copies, and the loss against it."""
  net = models.MLP(hidden=(16, 16), out=1)
  x = np.linspace(-3, 3, 64, dtype=np.float32)[:, None]
  truth = random_params(net, x, 11, scale=1.0)
  spec, zoo = permuted_copies(truth, n, 12, noise)
  f = forward(net, x)
  target = f(truth)
  loss = lambda p: float(np.mean((np.asarray(f(p)) - target) ** 2))  # noqa: E731
  return spec, zoo, loss, random_params(net, x, 13, scale=1.0)


class Recorder:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


@pytest.mark.parametrize("case", [mlp_case, conv_case])
def test_exact_ota_of_permuted_copies_returns_the_network(case):
  net, params, x = case()
  spec, zoo = permuted_copies(params, 4, 0)
  fused, info = ot_fusion.ot_fuse(spec, zoo, 1, 0.0, 10)
  assert max_diff(fused, jax.tree.map(lambda z: z[1], zoo)) < 1e-5   # the reference's order
  f = forward(net, x)
  np.testing.assert_allclose(f(fused), f(params), atol=1e-4, rtol=1e-4)
  assert info["dist_before"] > 1.0 and info["dist_after"] < 1e-8
  assert info["units_moved"] > 0.3


def marginal_error(m):
  """Largest relative marginal error of M = n_ref T (rows and columns), in float64."""
  m = np.asarray(m, np.float64)
  n_r, n_m = m.shape[-2:]
  return max(np.abs(m.sum(-1) - 1.0).max(), np.abs(m.sum(-2) * n_m / n_r - 1.0).max())


def test_sinkhorn_marginals_and_limits():
  rng = np.random.default_rng(0)
  cost = rng.uniform(size=(3, 5, 5)).astype(np.float32)
  m, err, _ = ot_fusion.sinkhorn(cost, 0.05, 2000)
  np.testing.assert_allclose(np.sum(m, -1), 1.0, atol=1e-5)   # rows: exact by construction
  assert np.all(err <= ot_fusion.SINKHORN_TOL) and marginal_error(m) <= ot_fusion.SINKHORN_TOL
  # Small reg: the optimal assignment; large reg: the uniform plan.
  exact = perm_lib.assignment(cost.astype(np.float64))
  small, err, _ = ot_fusion.sinkhorn(cost, 1e-3, 2000)
  assert np.all(err <= ot_fusion.SINKHORN_TOL)
  np.testing.assert_allclose(small, perm_lib.permutation_matrix(exact), atol=1e-2)
  big, _, _ = ot_fusion.sinkhorn(cost, 1e3, 50)
  np.testing.assert_allclose(big, 0.2, atol=1e-3)
  for k in range(3):
    rows, cols = linear_sum_assignment(cost[k])
    assert list(exact[k, rows]) == list(cols)


def test_sinkhorn_stops_on_convergence_and_reports_its_error():
  """The loop stops once the marginals are within the tolerance (well before a
  large cap), reports the error it reached, and a tighter tolerance takes longer."""
  rng = np.random.default_rng(1)
  cost = rng.uniform(size=(4, 12, 12)).astype(np.float32)
  m, err, n = jax.device_get(ot_fusion.sinkhorn(cost, 0.02, 100000))
  assert 1 < n < 100000
  assert err.shape == (4,) and np.all(err <= ot_fusion.SINKHORN_TOL)
  assert marginal_error(m) <= ot_fusion.SINKHORN_TOL
  assert abs(marginal_error(m) - err.max()) < 1e-5                # it reports M's error
  m2, err2, n2 = jax.device_get(ot_fusion.sinkhorn(cost, 0.02, 100000, 1e-4))
  assert n2 > n and np.all(err2 <= 1e-4) and marginal_error(m2) <= 1e-4
  # Capped early, it reports the larger error instead of hiding it.
  _, err3, n3 = jax.device_get(ot_fusion.sinkhorn(cost, 0.02, 3))
  assert n3 == 3 and err3.max() > ot_fusion.SINKHORN_TOL


def test_unconverged_sinkhorn_raises_a_clear_error():
  """At a small ot_reg the default-length Sinkhorn is far from a transport plan
  (columns off by tens of percent); ota refuses it instead of averaging with it."""
  spec, zoo, _, _ = toy_problem()
  ref = jax.tree.map(lambda z: z[0], zoo)
  with pytest.raises(ot_fusion.SinkhornNotConverged,
                     match=r"Dense_0.*ota\.iters = 20.*tolerance 0\.001.*ota\.reg"):
    ot_fusion.ot_align(spec, ref, zoo, 1e-3, 20)
  with pytest.raises(ConfigError, match="did not converge"):   # a user-fixable config error
    ot_fusion.ot_fuse(spec, zoo, 0, 0.01, 200)
  # Enough iterations (it stops early): every layer's plan is within the tolerance.
  _, maps = ot_fusion.ot_align(spec, ref, zoo, 0.05, 5000)
  for m in maps.values():
    assert marginal_error(m) <= ot_fusion.SINKHORN_TOL


def test_make_init_with_sinkhorn_records_convergence_or_raises():
  _, zoo, _, _ = toy_problem()
  ctx = _ctx(zoo, ota__reg=0.05, ota__iters=5000)
  ot_fusion.OTA.make_init(ctx)
  (_, row), = ctx.writer.rows
  assert 1 <= row["ota/sinkhorn_iters"] < 5000
  assert row["ota/sinkhorn_err"] <= ot_fusion.SINKHORN_TOL
  ctx = _ctx(zoo, ota__reg=1e-3, ota__iters=20)
  with pytest.raises(ot_fusion.SinkhornNotConverged, match="raise ota.iters"):
    ot_fusion.OTA.make_init(ctx)


def test_sinkhorn_approaches_exact_as_reg_shrinks():
  _, params, _ = mlp_case()
  spec, zoo = permuted_copies(params, 4, 1, noise=0.05)
  exact, _ = ot_fusion.ot_fuse(spec, zoo, 0, 0.0, 10)
  gaps = [max_diff(ot_fusion.ot_fuse(spec, zoo, 0, reg, 300)[0], exact)
          for reg in (0.3, 0.03, 0.003)]
  assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4 and gaps[0] > 1e-2


def test_soft_alignment_is_not_function_preserving():
  net, params, x = mlp_case()
  spec, zoo = permuted_copies(params, 4, 2)
  f = forward(net, x)
  ref = jax.tree.map(lambda z: z[0], zoo)
  soft, mats = ot_fusion.ot_align(spec, ref, zoo, 0.5, 300)
  hard, _ = ot_fusion.ot_align(spec, ref, zoo, 0.0, 10)
  one = lambda t: jax.tree.map(lambda z: z[2], jax.device_get(t))  # noqa: E731
  np.testing.assert_allclose(f(one(hard)), f(params), atol=1e-4, rtol=1e-4)
  assert float(np.abs(f(one(soft)) - f(params)).max()) > 1e-2
  assert mats["Dense_0"].shape == (4, 6, 6)
  np.testing.assert_allclose(mats["Dense_0"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("reg", [0.0, 0.01])
def test_ota_beats_averaging_and_random_init_on_a_toy_zoo(reg):
  spec, zoo, loss, random_init = toy_problem()
  fused, _ = ot_fusion.ot_fuse(spec, zoo, 0, reg, 5000)   # Sinkhorn converges in ~1250
  va = jax.tree.map(lambda z: z.mean(0), zoo)
  assert loss(fused) < 0.5 * loss(va) and loss(fused) < 0.5 * loss(random_init)


def test_realigning_to_the_average_keeps_the_answer():
  net, params, x = mlp_case()
  spec, zoo = permuted_copies(params, 4, 3)
  fused, _ = ot_fusion.ot_fuse(spec, zoo, 2, 0.0, 10, rounds=2)
  f = forward(net, x)
  np.testing.assert_allclose(f(fused), f(params), atol=1e-4, rtol=1e-4)


def _ctx(zoo, **overrides):
  """A method context over `zoo`: Q = model 0, S = the rest; metrics recorded."""
  config = helpers.smoke_config(**overrides)
  n = jax.tree.leaves(zoo)[0].shape[0]
  return methods.MethodContext(config=config, benchmark=None, zoo=zoo,
                               s_idx=np.arange(1, n), q_idx=np.array([0]),
                               key=jax.random.key(0), writer=Recorder())


def test_make_init_fuses_the_zoo_and_logs():
  net, params, x = mlp_case()
  spec, zoo = permuted_copies(params, 5, 4)
  ctx = _ctx(zoo, ota__align_reference="first")
  theta = ot_fusion.OTA.make_init(ctx)
  assert max_diff(theta, jax.tree.map(lambda z: z[1], zoo)) < 1e-5   # S[0] = model 1
  f = forward(net, x)
  np.testing.assert_allclose(f(theta), f(params), atol=1e-4, rtol=1e-4)
  (_, row), = ctx.writer.rows
  assert row["ota/reference"] == 1 and row["ota/dist_after"] < 1e-8
  assert methods.METHODS["ota"] is ot_fusion.OTA and ot_fusion.OTA.tags == ("baseline",)


def test_make_init_is_not_applicable_to_unknown_networks():
  zoo = {"encoder": {"w": np.zeros((3, 2, 2), np.float32)}}
  with pytest.raises(NotApplicable, match="models.Conv4"):
    ot_fusion.OTA.make_init(_ctx(zoo))


@pytest.mark.parametrize("field,value", [
    ("reg", -0.1), ("reg", float("nan")), ("reg", float("inf")),
    ("iters", 0), ("iters", -3), ("align_reference", "median"), ("align_rounds", 0)])
def test_validate_rejects_bad_values(field, value):
  ot_fusion.OTA.validate(helpers.smoke_config())           # the defaults are valid
  with pytest.raises(ConfigError, match=f"ota.{field}"):
    ot_fusion.OTA.validate(helpers.smoke_config(**{f"ota__{field}": value}))
