"""Implementation choices of models.Conv4 compute the same function and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import models
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.tasks import fewshot
from tests import helpers


def _normal(seed, shape, dtype=np.float32):
  """Standard normal test inputs drawn with numpy: a `jax.random.normal` of each new shape
  compiles a program of its own (about 2 s here)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _close(a, b, tol=1e-4):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def test_patch_conv_equals_xla_conv_values_and_gradients():
  x = _normal(0, (2, 7, 6, 3))
  xla = nn.Conv(5, (3, 3), padding="SAME")
  params = xla.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias
  patch = models.PatchConv3x3(5)
  assert jax.tree.map(jnp.shape, patch.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, params)
  _close(xla.apply(params, x), patch.apply(params, x))
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  grads = jax.jit(lambda p, x: [jax.grad(loss(m), argnums=(0, 1))(p, x) for m in (xla, patch)])
  _close(*grads(params, x))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 21, 21, 2), (3, 5, 4, 1)])
def test_reshape_pool_equals_window_pool(shape):
  x = _normal(2, shape)  # no ties: gradients agree too
  window = lambda x: models.max_pool_2x2(x, "window")
  reshape = lambda x: models.max_pool_2x2(x, "reshape")
  np.testing.assert_array_equal(window(x), reshape(x))
  w = _normal(3, window(x).shape)
  g = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * w)))(x)
  np.testing.assert_array_equal(g(window), g(reshape))


def test_reshape_pool_known_answer_and_bad_impl():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(models.max_pool_2x2(x)[0, :, :, 0], [[5, 7], [13, 15]])
  with pytest.raises(ValueError, match="pool impl"):
    models.max_pool_2x2(x, "avg")


# The patch form compiles slowly: with the slow tests (its convolution alone:
# test_patch_conv_equals_xla_conv_values_and_gradients).
@pytest.mark.parametrize("conv_impl,pool_impl", [
    pytest.param("patches", "reshape", marks=pytest.mark.slow), ("xla", "reshape")])
def test_conv4_variants_match_the_plain_form(conv_impl, pool_impl):
  x = _normal(4, (4, 18, 18, 3))  # 18 -> 9 -> 4: odd sizes too
  y = jnp.array([0, 1, 2, 0])
  plain = models.Conv4(ways=3, filters=4, conv_impl="xla", pool_impl="window")
  other = models.Conv4(ways=3, filters=4, conv_impl=conv_impl, pool_impl=pool_impl)
  params = plain.init(jax.random.key(5), x)["params"]

  def loss(net):
    def f(p):
      logits = models.apply_train_mode(net, p, x)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    return f

  both = jax.jit(lambda p: [(models.apply_train_mode(n, p, x), jax.grad(loss(n))(p))
                            for n in (plain, other)])
  ref, got = both(params)
  _close(ref, got)


def test_conv4_parameter_names_and_bn_switch():
  x = jnp.zeros((1, 16, 16, 3))
  init = lambda net: jax.eval_shape(net.init, jax.random.key(0), x)["params"]
  shapes = jax.tree.map(jnp.shape, init(models.Conv4(ways=5, filters=8, conv_impl="patches")))
  assert sorted(shapes) == sorted([f"Conv_{i}" for i in range(4)]
                                  + [f"BatchNorm_{i}" for i in range(4)] + ["Dense_0"])
  assert shapes["Conv_0"] == {"kernel": (3, 3, 3, 8), "bias": (8,)}
  assert shapes["Conv_3"]["kernel"] == (3, 3, 8, 8)
  assert shapes["BatchNorm_2"] == {"scale": (8,), "bias": (8,)}
  assert shapes["Dense_0"]["kernel"] == (8, 5)
  assert sorted(init(models.Conv4(ways=5, filters=8, bn=False))) == [f"Conv_{i}" for i in range(4)] + ["Dense_0"]
  with pytest.raises(ValueError, match="conv_impl"):
    init(models.Conv4(conv_impl="fft"))


def _plain_batch_norm(x, scale, bias, epsilon=1e-5):
  """The BatchNorm formula written out, differentiated by autodiff."""
  mean = x.mean((0, 1, 2))
  var = jnp.maximum(0.0, (x * x).mean((0, 1, 2)) - mean * mean)
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


@pytest.mark.parametrize("constant_channel", [False, True])
def test_batch_norm_train_backward_equals_autodiff(constant_channel):
  """All three outputs (y, mean, var) carry cotangents; float64 so only the formula differs."""
  with jax.enable_x64(True):
    x = 2.0 * _normal(10, (3, 5, 4, 3), np.float64) + 1.0
    if constant_channel:  # variance 0 up to rounding: gradients stay finite and equal
      x = x.at[..., 1].set(0.7)
    scale, bias = jnp.array([0.5, 1.0, 1.5]), jnp.array([0.0, -1.0, 2.0])
    weights = [_normal(11 + i, s, np.float64)
               for i, s in enumerate([x.shape, (3,), (3,)])]

    def loss(fn):
      return lambda *a: sum(jnp.sum(o * w) for o, w in zip(fn(*a), weights))

    fused = lambda x, s, b: models.batch_norm_train(x, s, b, 1e-5)
    for o1, o2 in zip(_plain_batch_norm(x, scale, bias), fused(x, scale, bias)):
      np.testing.assert_allclose(o1, o2, rtol=1e-12, atol=1e-12)
    ref = jax.grad(loss(_plain_batch_norm), argnums=(0, 1, 2))(x, scale, bias)
    got = jax.jit(jax.grad(loss(fused), argnums=(0, 1, 2)))(x, scale, bias)
    for r, g in zip(ref, got):
      assert np.all(np.isfinite(g))
      np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9)


def test_fused_batch_norm_conv4_equals_flax_batch_norm():
  """Same variables, same outputs (train mode and with a reference batch), same gradients."""
  x = _normal(12, (6, 16, 16, 3))
  flax_bn = models.Conv4(ways=3, filters=4, conv_impl="patches")
  fused = models.Conv4(ways=3, filters=4, conv_impl="patches", bn_impl="fused")
  variables = jax.jit(flax_bn.init)(jax.random.key(13), x)
  assert jax.tree.map(jnp.shape, jax.eval_shape(fused.init, jax.random.key(13), x)) == (
      jax.tree.map(jnp.shape, variables))
  params = jax.tree.map(lambda p: p + 0.1 * _normal(14, p.shape),
                        variables["params"])
  loss = lambda net: lambda p: jnp.sum(jnp.sin(models.apply_train_mode(net, p, x)))

  @jax.jit  # one compiled program: op-by-op flax applies would compile every op alone
  def outputs(p):
    return [(models.apply_train_mode(n, p, x), models.apply_with_reference(n, p, x[:2], x),
             n.apply({"params": p}, x, train=True, mutable=["batch_stats"])[1],
             jax.grad(loss(n))(p)) for n in (flax_bn, fused)]

  (ref_y, ref_yr, ref_stats, ref), (y, yr, stats, got) = outputs(params)
  _close(y, ref_y)
  _close(yr, ref_yr)
  _close(stats, ref_stats)
  # The conv biases feeding BatchNorm have true gradient 0: compare on the gradients' scale.
  for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * max(1.0, float(jnp.abs(r).max())))
  with pytest.raises(ValueError, match="bn_impl"):
    models.Conv4(bn_impl="cudnn").init(jax.random.key(0), x)


# Compiles a vmapped Conv4 gradient (slow); the patch convolution itself: test_patch_conv_*.
@pytest.mark.slow
def test_vmapped_patch_conv4_equals_member_by_member():
  net = models.Conv4(ways=3, filters=4, conv_impl="patches", bn=False)
  xs = jax.random.normal(jax.random.key(6), (2, 2, 16, 16, 3))
  params = jax.jit(jax.vmap(lambda k: net.init(k, xs[0])["params"]))(jax.random.split(
      jax.random.key(7), 2))
  g = jax.jit(lambda p, x: jax.grad(lambda p: jnp.sum(net.apply({"params": p}, x) ** 2))(p))
  together = jax.vmap(g)(params, xs)
  for m in range(2):
    _close(jax.tree.map(lambda a: a[m], together),
           g(jax.tree.map(lambda a: a[m], params), xs[m]))


def test_resolve_backend_choices_on_cpu():
  config = helpers.fewshot_config()
  assert jax.default_backend() == "cpu"
  assert fewshot.resolve_backend_choices(
      helpers.override(config, model__conv_impl="auto", zoo__member_loop="auto")) == (
          "patches", "map")
  assert fewshot.resolve_backend_choices(
      helpers.override(config, model__conv_impl="xla", zoo__member_loop="vmap")) == (
          "xla", "vmap")
  with pytest.raises(ConfigError, match="member_loop"):
    fewshot.resolve_backend_choices(helpers.override(config, zoo__member_loop="chunked"))
  with pytest.raises(ConfigError, match="conv_impl"):
    fewshot.resolve_backend_choices(helpers.override(config, model__conv_impl="fft"))
