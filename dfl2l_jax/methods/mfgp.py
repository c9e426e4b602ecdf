"""`mfgp`: Gaussian-process model fusion (Lam, Hoang, Low, Jaillet, "Model Fusion
for Personalized Learning", ICML 2021), in a data-free form.

The original conditions a generative model of the pretrained models' parameters
on task descriptors (side information s_i given with every model: e.g. a
sinusoid's amplitude and phase): a sparse GP over descriptors produces a
task-specific latent, a neural decoder maps it (with a shared latent) to
parameters, and the model for a new task is the prediction at that task's
descriptor. DFL2L's zoo comes with no descriptors, so we let the zoo describe
itself (docs/baselines.md gives every adaptation):

- descriptor d_i of model i: its coordinates on the top `mfgp_descriptor_dim`
  principal components of the zoo's flattened parameters (PCA);
- a GP with a constant mean m (the element-wise mean of the zoo) and an ARD
  RBF kernel over descriptors, shared by all P parameters (independent
  outputs), regressing the parameters directly on the descriptors;
- kernel lengthscales, signal and noise variances fitted by maximising the
  GP's log marginal likelihood on the zoo (Adam on log-parameters);
- the new task's descriptor is the mean descriptor (as DFL2L's Eq. 9 takes the
  mean embedding), and theta_init is the GP posterior mean there:

      theta_init = m + sum_i w_i (theta_i - m),  w = (K + s_n^2 I)^{-1} k(D, d*).

Everything needs only the N x N Gram matrix of the centred models, so its cost
is one pass over the parameters plus O(N^3) linear algebra.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dfl2l_jax import checks
from dfl2l_jax import likelihood
from dfl2l_jax import metrics
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.methods import base

JITTER = 1e-5  # added to the kernel diagonal, in units of the mean parameter variance


def num_params(models):
  """P: the parameter count of one model of a pytree with a leading model axis."""
  return sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(models))


@jax.jit
def centered_gram(models):
  """(G, mean): G_ij = <theta_i - m, theta_j - m> over all parameters, m the
  element-wise mean of `models` (leading model axis).

  Computed leaf by leaf, so the zoo is never concatenated into one matrix.
  """
  mean = jax.tree.map(lambda x: x.mean(0), models)
  n = jax.tree.leaves(models)[0].shape[0]
  gram = jnp.zeros((n, n), jnp.float32)
  for x, mu in zip(jax.tree.leaves(models), jax.tree.leaves(mean)):
    y = (x - mu[None]).reshape(n, -1)
    gram = gram + y @ y.T
  return gram, mean


@functools.partial(jax.jit, static_argnames="dim")
def pca_descriptors(gram, dim):
  """The stand-in task descriptors: each model's coordinates on the top `dim`
  principal components of the centred zoo, from its Gram matrix.

  With Y the centred (N, P) parameter matrix and G = Y Y^T = V diag(l) V^T, the
  projections of the rows of Y on the top right singular vectors are
  V_r diag(sqrt(l_r)). Signs are fixed so each column's largest entry is
  positive (the RBF kernel does not depend on them).
  """
  evals, evecs = jnp.linalg.eigh(gram)
  evals, evecs = evals[::-1][:dim], evecs[:, ::-1][:, :dim]
  desc = evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None]
  sign = jnp.sign(desc[jnp.argmax(jnp.abs(desc), axis=0), jnp.arange(dim)])
  return desc * jnp.where(sign == 0, 1.0, sign)[None]


def rbf_kernel(x1, x2, hp):
  """ARD squared-exponential kernel s_f^2 exp(-0.5 sum_j ((x1_j - x2_j) / l_j)^2)."""
  z1 = x1 / jnp.exp(hp["log_lengthscale"])
  z2 = x2 / jnp.exp(hp["log_lengthscale"])
  sq = (jnp.sum(z1 ** 2, -1)[:, None] + jnp.sum(z2 ** 2, -1)[None]
        - 2.0 * z1 @ z2.T)
  return jnp.exp(hp["log_signal"]) * jnp.exp(-0.5 * jnp.maximum(sq, 0.0))


def _train_cov(hp, desc, scale):
  n = desc.shape[0]
  return (rbf_kernel(desc, desc, hp)
          + (jnp.exp(hp["log_noise"]) + JITTER * scale) * jnp.eye(n, dtype=desc.dtype))


def log_marginal_likelihood(hp, desc, gram, num_outputs, scale=1.0):
  """log p(Y | D) of a GP with P = num_outputs independent outputs sharing one
  kernel, for centred targets Y given through G = Y Y^T (Rasmussen & Williams
  2006, Eq. 2.30, summed over outputs):

      -P/2 log|K| - 1/2 tr(K^{-1} G) - N P/2 log(2 pi),  K = k(D, D) + s_n^2 I.

  `scale` sets the size of the diagonal jitter (the mean parameter variance).
  """
  n = desc.shape[0]
  chol = jnp.linalg.cholesky(_train_cov(hp, desc, scale))
  logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
  fit = jnp.trace(jax.scipy.linalg.cho_solve((chol, True), gram))
  return -0.5 * num_outputs * logdet - 0.5 * fit - 0.5 * n * num_outputs * jnp.log(2 * jnp.pi)


def init_hparams(desc, gram, num_outputs):
  """Starting point: lengthscale_j = std of descriptor j, signal variance = the
  mean variance of a parameter across the zoo, noise = 10% of it."""
  var = jnp.trace(gram) / (desc.shape[0] * num_outputs)
  std = jnp.std(desc, axis=0)
  std = jnp.maximum(std, 1e-3 * jnp.max(std) + 1e-12)
  return {"log_lengthscale": jnp.log(std), "log_signal": jnp.log(var),
          "log_noise": jnp.log(0.1 * var)}


def hparam_bounds(desc, gram, num_outputs):
  """The box the fit stays in, relative to the data's own scales: lengthscales
  within 1e-3..1e3 times the largest descriptor spread, signal variance within
  1e-4..1e4 and noise variance within 1e-6..10 times the mean parameter
  variance. Without it an exactly low-rank zoo drives the noise to 0 and the
  marginal likelihood to infinity."""
  var = jnp.trace(gram) / (desc.shape[0] * num_outputs)
  spread = jnp.max(jnp.std(desc, axis=0)) + 1e-12
  lo = {"log_lengthscale": jnp.full(desc.shape[1], jnp.log(1e-3 * spread)),
        "log_signal": jnp.log(1e-4 * var), "log_noise": jnp.log(1e-6 * var)}
  hi = {"log_lengthscale": jnp.full(desc.shape[1], jnp.log(1e3 * spread)),
        "log_signal": jnp.log(1e4 * var), "log_noise": jnp.log(10.0 * var)}
  return lo, hi


@functools.partial(jax.jit, static_argnames=("num_outputs", "steps"))
def fit_hparams(hp, desc, gram, num_outputs, steps, lr):
  """Maximises the log marginal likelihood over the log hyperparameters with
  `steps` Adam steps (one lax.scan), each projected onto `hparam_bounds`.

  Returns (hp, lml per step): the hyperparameters with the highest finite log
  marginal likelihood met (the start included), so the fit never ends worse
  than it began. The objective is divided by N * P so that `lr` does not
  depend on the zoo's size; the trace holds the undivided values.
  """
  n = desc.shape[0]
  scale = jnp.trace(gram) / (n * num_outputs)
  lo, hi = hparam_bounds(desc, gram, num_outputs)
  opt = optax.adam(lr)

  def loss(h):
    return -log_marginal_likelihood(h, desc, gram, num_outputs, scale) / (n * num_outputs)

  def step(carry, _):
    h, state, best_h, best = carry
    value, grads = jax.value_and_grad(loss)(h)
    better = jnp.isfinite(value) & (value < best)
    best_h = jax.tree.map(lambda a, b: jnp.where(better, a, b), h, best_h)
    best = jnp.where(better, value, best)
    updates, state = opt.update(grads, state, h)
    h = jax.tree.map(jnp.clip, optax.apply_updates(h, updates), lo, hi)
    return (h, state, best_h, best), -value * n * num_outputs

  h0 = jax.tree.map(jnp.clip, hp, lo, hi)
  carry = (h0, opt.init(h0), h0, jnp.asarray(jnp.inf, jnp.float32))
  (h, _, best_h, best), trace = jax.lax.scan(step, carry, None, length=steps)
  last = loss(h)
  better = jnp.isfinite(last) & (last < best)
  return jax.tree.map(lambda a, b: jnp.where(better, a, b), h, best_h), trace


@jax.jit
def posterior_weights(hp, desc, query, scale=1.0):
  """w = (K + s_n^2 I)^{-1} k(D, d*): the GP posterior mean at d* is
  m + sum_i w_i (y_i - m) for every output (Rasmussen & Williams, Eq. 2.25)."""
  chol = jnp.linalg.cholesky(_train_cov(hp, desc, scale))
  return jax.scipy.linalg.cho_solve((chol, True), rbf_kernel(desc, query[None], hp)[:, 0])


@jax.jit
def posterior_mean(models, mean, weights):
  """m + sum_i w_i (theta_i - m), over every leaf of the parameter pytree."""
  return jax.tree.map(lambda x, mu: mu + jnp.tensordot(weights, x - mu[None], axes=1),
                      models, mean)


def mfgp_init(ctx: base.MethodContext):
  """The GP posterior mean of the zoo's parameters at the mean descriptor."""
  mc = ctx.config.mfgp
  models = ctx.zoo
  gram, mean = centered_gram(models)
  n, p = gram.shape[0], num_params(models)
  desc = pca_descriptors(gram, int(mc.descriptor_dim))
  scale = jnp.trace(gram) / (n * p)
  hp0 = init_hparams(desc, gram, p)
  lml0 = log_marginal_likelihood(hp0, desc, gram, p, scale)
  hp, _ = fit_hparams(hp0, desc, gram, p, int(mc.fit_steps),
                          float(mc.fit_lr))
  lml = log_marginal_likelihood(hp, desc, gram, p, scale)
  if not bool(jnp.isfinite(lml)) or lml < lml0:  # the fit failed or diverged: keep the start.
    metrics.log.warning("mfgp: hyperparameter fit did not improve the marginal likelihood "
                        "(%.6g -> %.6g); keeping the initial values", float(lml0), float(lml))
    hp, lml = hp0, lml0
  query = desc.mean(0)
  weights = posterior_weights(hp, desc, query, scale)
  theta = posterior_mean(models, mean, weights)
  q_ll = jax.vmap(lambda q: likelihood.gaussian_log_likelihood(theta, q, ctx.config.fusion.sigma))(
      ctx.zoo_q).mean()
  logged = {"mfgp/lml_per_param_init": lml0 / (n * p),
            "mfgp/lml_per_param": lml / (n * p),
            "mfgp/signal_var": jnp.exp(hp["log_signal"]),
            "mfgp/noise_var": jnp.exp(hp["log_noise"]),
            "mfgp/weight_sum": weights.sum(), "mfgp/weight_max": weights.max(),
            "mfgp/q_log_likelihood": q_ll}
  for j, l in enumerate(np.asarray(jnp.exp(hp["log_lengthscale"]))):
    logged[f"mfgp/lengthscale_{j}"] = l
  logged = {k: float(v) for k, v in jax.device_get(logged).items()}
  if ctx.writer is not None:
    ctx.writer.write_scalars(0, logged)
  metrics.log.info("mfgp: log marginal likelihood per parameter %.5g -> %.5g; noise/signal "
                   "%.3g; weights sum %.4g, max %.4g", logged["mfgp/lml_per_param_init"],
                   logged["mfgp/lml_per_param"],
                   logged["mfgp/noise_var"] / logged["mfgp/signal_var"],
                   logged["mfgp/weight_sum"], logged["mfgp/weight_max"])
  return theta


def defaults():
  """config.mfgp."""
  c = ml_collections.ConfigDict()
  c.descriptor_dim = 4                  # PCA dimensions of the stand-in task descriptors
  c.fit_steps = 300                     # Adam steps on the GP log marginal likelihood
  c.fit_lr = 0.05
  return c


FIELDS = {"mfgp.descriptor_dim": checks.POSITIVE_INT,
          "mfgp.fit_steps": checks.NON_NEGATIVE_INT,
          "mfgp.fit_lr": checks.POSITIVE_REAL}


def validate(config):
  checks.check(config, FIELDS)
  dim = config.mfgp.descriptor_dim
  if checks.is_int(config.zoo.num_models) and dim > config.zoo.num_models - 1:
    raise ConfigError(
        f"config.mfgp.descriptor_dim={dim} exceeds the {config.zoo.num_models - 1} "
        f"principal components a zoo of {config.zoo.num_models} models has")


MFGP = base.Method(
    "mfgp", ("baseline",), mfgp_init,
    "GP model fusion (Lam et al. 2021) over PCA descriptors of the zoo, at the mean descriptor",
    validate, sections={"mfgp": defaults}, reads=("fusion.sigma",))
