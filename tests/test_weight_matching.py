"""Tests of methods/weight_matching.py (Git Re-Basin weight matching)."""

import contextlib
import logging

import jax
import numpy as np
import pytest

from dfl2l_jax import methods
from dfl2l_jax import metrics
from dfl2l_jax import permutations as perm_lib
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import ot_fusion
from dfl2l_jax.methods import weight_matching as wm
from tests import helpers
from tests.test_ot_fusion import _ctx, permuted_copies, toy_problem
from tests.test_permutations import conv_case, forward, max_diff, mlp_case


def _objective(reference, model):
  """<theta_ref, theta_model> over all parameters: what weight matching maximises
  (leaves that no permutation touches add a constant)."""
  return sum(float(np.sum(np.asarray(r, np.float64) * np.asarray(m)))
             for r, m in zip(jax.tree.leaves(reference), jax.tree.leaves(model)))


@pytest.mark.parametrize("case,init", [(conv_case, "identity"), (mlp_case, "ota"),
                                       (conv_case, "ota")])
def test_weight_matching_of_permuted_copies_returns_the_network(case, init):
  net, params, x = case()
  spec, zoo = permuted_copies(params, 4, 0)
  fused, info = wm.wm_fuse(spec, zoo, 1, 20, jax.random.key(0), init=init)
  assert max_diff(fused, jax.tree.map(lambda z: z[1], zoo)) < 1e-5   # the reference's order
  f = forward(net, x)
  np.testing.assert_allclose(f(fused), f(params), atol=1e-4, rtol=1e-4)
  assert info["dist_before"] > 1.0 and info["dist_after"] < 1e-8
  # Stops early: a sweep that improves, then (at most) one that confirms.
  assert info["sweeps"] <= (1 if init == "ota" else 3)


def test_coordinate_descent_never_loses_and_ends_at_a_coordinate_optimum():
  """On unrelated models: the objective of every model is at least the identity's,
  and no single permutation's linear assignment improves it any more."""
  _, params, _ = mlp_case()
  rng = np.random.default_rng(0)
  zoo = jax.tree.map(lambda x: rng.normal(size=(5,) + x.shape).astype(np.float32), params)
  spec = perm_lib.spec_from_params(params)
  ref = jax.tree.map(lambda z: z[0], zoo)
  perms, sweeps, converged = wm.match_weights(spec, ref, zoo, 50, jax.random.key(1))
  assert sweeps < 50 and converged
  aligned = jax.device_get(perm_lib.apply_permutation_batched(spec, perms, zoo))
  for m in range(1, 5):
    model = jax.tree.map(lambda z, m=m: z[m], zoo)
    new = jax.tree.map(lambda z, m=m: z[m], aligned)
    assert _objective(ref, new) >= _objective(ref, model) - 1e-4
  # One more sweep from the result changes nothing.
  again, more, converged = wm.match_weights(spec, ref, zoo, 5, jax.random.key(2), perms)
  assert more == 1 and converged
  for k in perms:
    np.testing.assert_array_equal(again[k], perms[k])


@contextlib.contextmanager
def warnings_logged(caplog):
  """Captures dfl2l_jax's warnings even where a launcher stopped their propagation."""
  metrics.log.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.WARNING, logger="dfl2l_jax"):
      yield
  finally:
    metrics.log.removeHandler(caplog.handler)


def cap_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and "weight_matching.iters" in r.getMessage()]


def test_stopping_at_the_sweep_cap_warns_and_is_reported(caplog):
  """Unrelated models need several sweeps: one sweep stops while they still
  improve, which is logged and reported; a converged run logs nothing."""
  _, params, _ = mlp_case()
  rng = np.random.default_rng(0)
  zoo = jax.tree.map(lambda x: rng.normal(size=(5,) + x.shape).astype(np.float32), params)
  spec = perm_lib.spec_from_params(params)
  ref = jax.tree.map(lambda z: z[0], zoo)
  with warnings_logged(caplog):
    _, sweeps, converged = wm.match_weights(spec, ref, zoo, 1, jax.random.key(1))
  assert sweeps == 1 and not converged
  msg, = set(cap_warnings(caplog))
  assert msg.startswith("weight_matching:") and "cap of 1 sweeps (weight_matching.iters)" in msg
  assert "raise weight_matching.iters" in msg
  caplog.clear()
  with warnings_logged(caplog):
    _, info = wm.wm_fuse(spec, zoo, 0, 1, jax.random.key(1))
  assert info["converged"] == 0.0 and info["sweeps"] == 1.0 and cap_warnings(caplog)
  caplog.clear()
  with warnings_logged(caplog):
    _, sweeps, converged = wm.match_weights(spec, ref, zoo, 50, jax.random.key(1))
    _, info = wm.wm_fuse(spec, zoo, 0, 50, jax.random.key(1))
  assert 1 < sweeps < 50 and converged and info["converged"] == 1.0
  assert not cap_warnings(caplog)


def test_converging_in_the_last_allowed_sweep_does_not_warn(caplog):
  """Permuted copies started from exact OT: the first sweep already improves
  nothing, so a cap of 1 is not a truncation."""
  _, params, _ = conv_case()
  spec, zoo = permuted_copies(params, 4, 0)
  with warnings_logged(caplog):
    _, info = wm.wm_fuse(spec, zoo, 1, 1, jax.random.key(0), init="ota")
  assert info["sweeps"] == 1.0 and info["converged"] == 1.0 and not cap_warnings(caplog)


@pytest.mark.parametrize("init", ["identity", "ota"])
def test_weight_matching_beats_averaging_and_random_init_on_a_toy_zoo(init):
  spec, zoo, loss, random_init = toy_problem()
  fused, _ = wm.wm_fuse(spec, zoo, 0, 20, jax.random.key(0), init=init)
  va = jax.tree.map(lambda z: z.mean(0), zoo)
  # From the identity, coordinate descent stops at poor coordinate-wise optima for
  # several of these far-permuted narrow models (docs/baselines.md); it still helps.
  factor = 0.9 if init == "identity" else 0.01
  assert loss(fused) < factor * loss(va) and loss(fused) < factor * loss(random_init)
  if init == "ota":
    exact_ot, _ = ot_fusion.ot_fuse(spec, zoo, 0, 0.0, 1)
    assert loss(fused) <= loss(exact_ot) * 1.05


def test_realigning_to_the_average_keeps_the_answer():
  net, params, x = conv_case()
  spec, zoo = permuted_copies(params, 4, 3)
  fused, _ = wm.wm_fuse(spec, zoo, 2, 20, jax.random.key(0), rounds=2)
  f = forward(net, x)
  np.testing.assert_allclose(f(fused), f(params), atol=1e-4, rtol=1e-4)


def test_make_init_fuses_the_zoo_and_logs():
  net, params, x = conv_case()
  spec, zoo = permuted_copies(params, 5, 4)
  ctx = _ctx(zoo, weight_matching__align_reference="first")
  theta = wm.WEIGHT_MATCHING.make_init(ctx)
  assert max_diff(theta, jax.tree.map(lambda z: z[1], zoo)) < 1e-5   # S[0] = model 1
  (_, row), = ctx.writer.rows
  assert row["weight_matching/reference"] == 1 and row["weight_matching/dist_after"] < 1e-8
  assert methods.METHODS["weight_matching"] is wm.WEIGHT_MATCHING
  assert wm.WEIGHT_MATCHING.tags == ("baseline",)
  with pytest.raises(NotApplicable, match="models.MLP"):
    wm.WEIGHT_MATCHING.make_init(_ctx({"encoder": {"w": np.zeros((3, 2), np.float32)}}))


@pytest.mark.parametrize("field,value", [
    ("iters", 0), ("iters", -1), ("init", "random"), ("align_reference", ""),
    ("align_rounds", -2)])
def test_validate_rejects_bad_values(field, value):
  wm.WEIGHT_MATCHING.validate(helpers.smoke_config())     # the defaults are valid
  with pytest.raises(ConfigError, match=f"weight_matching.{field}"):
    wm.WEIGHT_MATCHING.validate(helpers.smoke_config(**{f"weight_matching__{field}": value}))
