"""Tests of dfl2l_jax/permutations.py: the hidden-unit symmetries of MLP and Conv4."""

import functools

import jax
import numpy as np
import pytest

from dfl2l_jax import models
from dfl2l_jax import permutations as perm_lib
from dfl2l_jax.errors import ConfigError, NotApplicable
from tests import helpers


def random_params(net, x, seed, scale=0.5):
  """Gaussian parameters in the shapes of net's, made in numpy (no eager jax ops).

  Biases and BatchNorm scales and offsets are non-trivial (not 0 or 1).
  """
  shapes = jax.eval_shape(net.init, jax.random.key(0), x)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)


@functools.lru_cache(maxsize=None)
def mlp_case():
  net = models.MLP(hidden=(6, 5), out=2)
  x = np.random.default_rng(1).normal(size=(9, 3)).astype(np.float32)
  return net, random_params(net, x, 2), x


@functools.lru_cache(maxsize=None)
def conv_case():
  # 32x32 input: 2x2x3 final map, so the head reads 4 blocks of 3 channels.
  net = models.Conv4(ways=4, filters=3)
  x = np.random.default_rng(1).normal(size=(5, 32, 32, 2)).astype(np.float32)
  return net, random_params(net, x, 2), x


def max_diff(a, b):
  a, b = jax.device_get((a, b))
  return max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def moving_perms(spec, seed=0, n_models=None):
  """random_perms with a seed at or after `seed` whose permutations all move some unit."""
  while True:
    perms = perm_lib.random_perms(spec, seed, n_models)
    if all(np.all(np.any(q != np.arange(q.shape[-1]), axis=-1)) for q in perms.values()):
      return perms
    seed += 1


permute = jax.jit(perm_lib.apply_permutation, static_argnums=0)
transport = jax.jit(perm_lib.apply_transport, static_argnums=0)


def forward(net, x):
  """Jitted outputs; Conv4 with BatchNorm normalising by the batch's own statistics."""
  if isinstance(net, models.Conv4):
    return jax.jit(lambda p: models.apply_train_mode(net, p, x))
  return jax.jit(lambda p: net.apply({"params": p}, x))


def test_mlp_spec_reads_the_tree():
  _, params, _ = mlp_case()
  spec = perm_lib.spec_from_params(params)
  assert spec.arch == "mlp"
  assert spec.names == ("Dense_0", "Dense_1")        # Dense_2 is the output layer
  assert [p.size for p in spec.perms] == [6, 5]
  axes = {(a.path, a.axis, a.own) for a in spec.perm("Dense_1").axes}
  assert axes == {(("Dense_1", "kernel"), 1, True), (("Dense_1", "bias"), 0, True),
                  (("Dense_2", "kernel"), 0, False)}


def test_conv_spec_reads_the_tree():
  _, params, _ = conv_case()
  spec = perm_lib.spec_from_params(params)
  assert spec.arch == "conv4"
  assert spec.names == ("Conv_0", "Conv_1", "Conv_2", "Conv_3")
  last = {a.path: a for a in spec.perm("Conv_3").axes}
  assert set(last) == {("Conv_3", "kernel"), ("Conv_3", "bias"), ("BatchNorm_3", "scale"),
                       ("BatchNorm_3", "bias"), ("Dense_0", "kernel")}
  assert last[("Dense_0", "kernel")].blocks == 4 and last[("Conv_3", "kernel")].axis == 3
  assert (("Conv_1", "kernel"), 2) in {(a.path, a.axis) for a in spec.perm("Conv_0").axes}


@pytest.mark.parametrize("case", [mlp_case, conv_case])
def test_permuting_hidden_units_preserves_the_function(case):
  net, params, x = case()
  spec = perm_lib.spec_from_params(params)
  perms = moving_perms(spec, 3)
  permuted = permute(spec, perms, params)
  assert max_diff(permuted, params) > 0.1             # the parameters did move
  f = forward(net, x)
  np.testing.assert_allclose(f(permuted), f(params), atol=1e-4, rtol=1e-4)


def test_head_rows_must_be_permuted_channel_wise():
  """The head reads a row-major (h, w, C) map: rows are (h*w, C), permuted on C.

  Reading them channel-major as (C, h*w) (PyTorch's layout) breaks the function.
  """
  net, params, x = conv_case()
  spec = perm_lib.spec_from_params(params)
  perm = np.array([2, 0, 1])
  good = jax.device_get(permute(spec, {"Conv_3": perm}, params))
  bad = jax.tree.map(np.array, good)
  bad["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].reshape(3, 4, -1)[perm].reshape(12, -1)
  f = forward(net, x)
  np.testing.assert_allclose(f(good), f(params), atol=1e-4, rtol=1e-4)
  assert float(np.abs(f(bad) - f(params)).max()) > 1e-2


@pytest.mark.parametrize("case", [mlp_case, conv_case])
def test_transport_with_permutation_matrices_is_the_permutation(case):
  _, params, _ = case()
  spec = perm_lib.spec_from_params(params)
  perms = moving_perms(spec, 4)
  mats = {k: perm_lib.permutation_matrix(v) for k, v in perms.items()}
  assert max_diff(transport(spec, mats, params), permute(spec, perms, params)) < 1e-6


def test_uniform_transport_averages_the_units():
  _, params, _ = mlp_case()
  spec = perm_lib.spec_from_params(params)
  out = transport(spec, {"Dense_0": np.full((6, 6), 1 / 6, np.float32)}, params)
  k0, k1 = params["Dense_0"]["kernel"], params["Dense_1"]["kernel"]
  np.testing.assert_allclose(out["Dense_0"]["kernel"], np.repeat(k0.mean(1, keepdims=True), 6, 1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["Dense_1"]["kernel"], np.repeat(k1.mean(0, keepdims=True), 6, 0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["Dense_2"]["kernel"], params["Dense_2"]["kernel"])


def test_batched_equals_a_loop():
  _, params, _ = conv_case()
  spec = perm_lib.spec_from_params(params)
  zoo = jax.tree.map(lambda x: np.stack([x, 2 * x, -x]), params)
  perms = moving_perms(spec, 5, n_models=3)
  batched = jax.device_get(perm_lib.apply_permutation_batched(spec, perms, zoo))
  for m in range(3):
    one = permute(spec, {k: v[m] for k, v in perms.items()},
                  jax.tree.map(lambda x, m=m: x[m], zoo))
    assert max_diff(one, jax.tree.map(lambda x, m=m: x[m], batched)) == 0.0
  feats = perm_lib.permuted_features_batched(spec, "Conv_1", False, perms, zoo)
  one = perm_lib.features_jit(spec, "Conv_1", False, jax.tree.map(lambda x: x[2], batched))
  np.testing.assert_array_equal(np.asarray(feats[2]), np.asarray(one))
  # own rows (3*3*3 kernel + bias + BN scale + BN bias) then the next kernel's (3*3*3).
  assert feats.shape == (3, 3, 27 + 3 + 27)
  own = perm_lib.permuted_features_batched(spec, "Conv_1", True, perms, zoo)
  np.testing.assert_array_equal(np.asarray(own), np.asarray(feats)[..., :30])


def test_unknown_architectures_are_not_applicable():
  with pytest.raises(NotApplicable, match="neither"):
    perm_lib.spec_from_params({"encoder": {"w": np.zeros((2, 3))}})
  with pytest.raises(NotApplicable, match="models.MLP"):
    perm_lib.spec_from_params({"Dense_0": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
                               "LayerNorm_0": {"scale": np.zeros(3)}})
  with pytest.raises(NotApplicable, match="input width"):
    perm_lib.spec_from_params({"Dense_0": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
                               "Dense_1": {"kernel": np.zeros((4, 1)), "bias": np.zeros(1)}})
  _, params, _ = conv_case()
  params = dict(params)
  params["Dense_0"] = {"kernel": np.zeros((13, 4)), "bias": np.zeros(4)}
  with pytest.raises(NotApplicable, match="flattened"):
    perm_lib.spec_from_params(params)
  assert perm_lib.spec_from_params(helpers.tiny_template()).names == ("Dense_0",)


def test_choose_reference():
  zoo = {"w": np.array([[0.0, 0.0], [1.0, 1.0], [0.9, 1.2], [3.0, 3.0]])}
  idx = perm_lib.choose_reference(zoo, np.array([3, 0, 1, 2]), "closest_to_mean")
  x = zoo["w"]
  sums = ((x[:, None] - x[None]) ** 2).sum((1, 2))   # total squared distance to the others
  assert idx == int(np.argmin(sums)) == 2
  assert perm_lib.choose_reference(zoo, np.array([3, 0, 1, 2]), "first") == 3
  with pytest.raises(ConfigError, match="align_reference"):
    perm_lib.choose_reference(zoo, np.array([0]), "median")
