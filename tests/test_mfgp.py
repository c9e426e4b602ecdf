"""Tests of methods/mfgp.py: GP model fusion over PCA descriptors of the zoo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dfl2l_jax.errors import ConfigError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import mfgp
from tests import helpers


def _hp(lengthscale, signal, noise):
  return {"log_lengthscale": jnp.log(jnp.asarray(lengthscale, jnp.float32)),
          "log_signal": jnp.log(jnp.float32(signal)), "log_noise": jnp.log(jnp.float32(noise))}


def _models(rng, n, shapes=((3,), (2, 2))):
  return {f"p{i}": jnp.asarray(rng.normal(size=(n,) + s), jnp.float32)
          for i, s in enumerate(shapes)}


def test_centered_gram_and_pca_match_numpy_svd():
  rng = np.random.default_rng(0)
  models = _models(rng, 7)
  flat = np.concatenate([np.asarray(x).reshape(7, -1) for x in jax.tree.leaves(models)], 1)
  yc = flat - flat.mean(0)
  gram, mean = mfgp.centered_gram(models)
  np.testing.assert_allclose(gram, yc @ yc.T, rtol=1e-4, atol=1e-4)
  assert mfgp.num_params(models) == 7
  desc = np.asarray(mfgp.pca_descriptors(gram, 3))
  u, s, _ = np.linalg.svd(yc, full_matrices=False)
  want = u[:, :3] * s[:3]
  np.testing.assert_allclose(np.abs(desc), np.abs(want), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(desc.mean(0), 0.0, atol=1e-4)  # centred: mean descriptor 0


def test_log_marginal_likelihood_equals_the_gaussian_density():
  rng = np.random.default_rng(1)
  desc = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  y = rng.normal(size=(5, 3))
  y = y - y.mean(0)
  hp = _hp([0.7, 1.3], 2.0, 0.1)
  cov = np.asarray(mfgp._train_cov(hp, desc, 1.0), np.float64)
  want = sum(stats.multivariate_normal(np.zeros(5), cov).logpdf(y[:, j]) for j in range(3))
  got = mfgp.log_marginal_likelihood(hp, desc, jnp.asarray(y @ y.T, jnp.float32), 3)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_posterior_mean_with_tiny_noise_interpolates_the_training_models():
  rng = np.random.default_rng(2)
  desc = jnp.asarray(rng.uniform(-2, 2, size=(6, 2)), jnp.float32)
  models = _models(rng, 6)
  mean = jax.tree.map(lambda x: x.mean(0), models)
  hp = _hp([0.6, 0.6], 1.0, 1e-7)
  for i in range(6):
    w = mfgp.posterior_weights(hp, desc, desc[i], 1e-3)
    pred = mfgp.posterior_mean(models, mean, w)
    jax.tree.map(lambda p, m: np.testing.assert_allclose(p, m[i], atol=2e-3), pred, models)
  # Far from every model the posterior mean returns to the prior mean m.
  w = mfgp.posterior_weights(hp, desc, jnp.asarray([50.0, 50.0]), 1e-3)
  jax.tree.map(lambda p, m: np.testing.assert_allclose(p, m, atol=1e-5),
               mfgp.posterior_mean(models, mean, w), mean)


def test_hyperparameter_fit_increases_the_marginal_likelihood():
  rng = np.random.default_rng(3)
  n, p = 24, 13  # the toy zoo's sizes below: both tests share one compilation
  desc = rng.uniform(-3, 3, size=(n, 2))
  # Outputs drawn from a GP with lengthscale 1 and small noise.
  k = np.exp(-0.5 * ((desc[:, None] - desc[None]) ** 2).sum(-1)) + 1e-2 * np.eye(n)
  y = np.linalg.cholesky(k) @ rng.normal(size=(n, p))
  y = y - y.mean(0)
  desc = jnp.asarray(desc, jnp.float32)
  gram = jnp.asarray(y @ y.T, jnp.float32)
  hp0 = _hp([5.0, 5.0], 0.3, 0.5)  # far from the truth
  hp, trace = mfgp.fit_hparams(hp0, desc, gram, p, 300, 0.05)
  lml0 = mfgp.log_marginal_likelihood(hp0, desc, gram, p)
  lml = mfgp.log_marginal_likelihood(hp, desc, gram, p)
  assert lml > lml0 + 100
  assert trace.shape == (300,) and trace[-1] > trace[0]
  np.testing.assert_allclose(np.exp(hp["log_lengthscale"]), [1.0, 1.0], rtol=0.35)
  assert np.exp(hp["log_noise"]) < 0.05


def test_mfgp_beats_a_random_init_on_a_toy_zoo():
  config = helpers.smoke_config(mfgp__descriptor_dim=2)
  zoo = helpers.toy_zoo(24, key=4, spread=0.5, rank=2)
  center = helpers.tiny_template()  # the toy zoo's task factors are N(0, 1) around it
  writer_rows = []

  class Writer:
    def write_scalars(self, step, scalars):
      writer_rows.append(scalars)

  ctx = base.MethodContext(config=config, benchmark=None, zoo=zoo, s_idx=np.arange(5, 24),
                           q_idx=np.arange(5), key=jax.random.key(0), writer=Writer())
  theta = mfgp.mfgp_init(ctx)
  random_init = jax.tree.map(
      lambda x: jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32) * 0.5
      + x, center)
  dist = lambda t: float(sum(jnp.sum((a - b) ** 2) for a, b in
                             zip(jax.tree.leaves(t), jax.tree.leaves(center))))
  mean_model = np.mean([dist(jax.tree.map(lambda x: x[i], zoo)) for i in range(24)])
  assert dist(theta) < 0.2 * mean_model
  assert dist(theta) < 0.2 * dist(random_init)
  row, = writer_rows
  assert row["mfgp/lml_per_param"] >= row["mfgp/lml_per_param_init"]
  assert {"mfgp/q_log_likelihood", "mfgp/noise_var", "mfgp/lengthscale_0"} <= set(row)


@pytest.mark.parametrize("field,value", [
    ("descriptor_dim", 0), ("descriptor_dim", 10), ("fit_steps", -1),
    ("fit_lr", 0.0), ("fit_lr", float("inf"))])
def test_validate_names_the_bad_field(field, value):
  config = helpers.smoke_config(**{f"mfgp__{field}": value})  # 10 models
  with pytest.raises(ConfigError, match=field):
    mfgp.validate(config)


def test_validate_accepts_the_defaults():
  mfgp.validate(helpers.smoke_config())
  mfgp.validate(helpers.smoke_config(mfgp__descriptor_dim=9, mfgp__fit_steps=0))
