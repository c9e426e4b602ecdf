"""Task-vector merging baselines: `task_arithmetic` and `ties`.

Both start from the zoo's shared initialisation theta_0 and the task vectors
tau_i = theta_i - theta_0 of the meta-training models S:

- Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic",
  ICLR 2023): theta = theta_0 + lambda * sum_i tau_i.
- TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When
  Merging Models", NeurIPS 2023): trim each tau_i to its top-k% entries by
  magnitude, elect a sign per parameter, average the entries that agree with
  it (disjoint mean), theta = theta_0 + lambda * merged.

lambda is chosen on the meta-validation models Q, never on meta-test tasks.
The default criterion (`scale_criterion = "likelihood"` in `config.task_arithmetic`
and `config.ties`) is data-free:
the mean Gaussian log-likelihood of the Q models' parameters under
N(theta_lambda, sigma^2 I), the quantity DFL2L's outer objective scores Q
with (Eq. 2, `likelihood.gaussian_log_likelihood`, sigma = `fusion.sigma`),
i.e. minus the mean squared parameter distance to Q over sigma^2.
`"zoo_data"` instead takes the mean training loss of theta_lambda on one batch
of each Q model's own task: it reads the zoo's training data and so breaks the
data-free setting (docs/baselines.md).

Every zoo model must start from one shared initialisation
(`zoo.shared_init`, the default), which `zoo.initial_params` reproduces
exactly; without it there is no common base and both methods raise
`errors.NotApplicable`.

Every function below is pure over parameter pytrees; a leading axis of a
pytree is the model axis.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfl2l_jax import checks
from dfl2l_jax import likelihood
from dfl2l_jax import metrics
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import NotApplicable
from dfl2l_jax.methods import base

CRITERIA = ("likelihood", "zoo_data")


# ----------------------------------------------------------------- pure functions


@jax.jit
def task_vectors(models, theta0):
  """tau_i = theta_i - theta_0 for every model (leading axis) of `models`."""
  return jax.tree.map(lambda m, b: m - b[None], models, theta0)


@jax.jit
def task_arithmetic(theta0, taus, lam):
  """Ilharco et al. (2023): theta_0 + lambda * sum_i tau_i."""
  return jax.tree.map(lambda b, t: b + lam * t.sum(0), theta0, taus)


def _flatten(taus):
  """(M, P) matrix of M task vectors: every leaf raveled per model, concatenated."""
  leaves = jax.tree.leaves(taus)
  return jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def _unflatten(flat, like):
  """Inverse of `_flatten` for a pytree `like` of the same structure and shapes."""
  leaves, treedef = jax.tree.flatten(like)
  out, start = [], 0
  for x in leaves:
    size = math.prod(x.shape[1:])
    out.append(flat[:, start:start + size].reshape(x.shape))
    start += size
  return jax.tree.unflatten(treedef, out)


def num_kept(num_params, density):
  """k of TIES' top-k: round(density * P) entries of each task vector, at least 1."""
  return max(1, min(num_params, int(round(density * num_params))))


@functools.partial(jax.jit, static_argnames="density")
def ties_trim(taus, density):
  """TIES step 1 (Yadav et al. 2023, Sec. 4 "Trim"): per task vector, zero all but
  its k = round(density * P) entries of largest magnitude.

  The top-k runs over all P parameters of one task vector (every leaf
  together), as in the paper, not per leaf. Entries tied with the k-th largest
  magnitude are all kept.
  """
  flat = _flatten(taus)
  k = num_kept(flat.shape[1], density)
  # The k-th largest |tau| of each model, one model at a time (bounded memory).
  thresh = jax.lax.map(lambda r: jax.lax.top_k(jnp.abs(r), k)[0][-1], flat)
  trimmed = jnp.where(jnp.abs(flat) >= thresh[:, None], flat, 0.0)
  return _unflatten(trimmed, taus)


@jax.jit
def ties_elect(trimmed):
  """TIES step 2 ("Elect"): gamma = sign(sum_i trimmed tau_i) per parameter.

  The sign of the summed trimmed values, i.e. the sign with the larger total
  magnitude; a parameter whose sum is exactly 0 gets sign 0 (merged to 0).
  """
  return jax.tree.map(lambda t: jnp.sign(t.sum(0)), trimmed)


@jax.jit
def ties_disjoint_mean(trimmed, signs):
  """TIES step 3 ("Disjoint Merge"): per parameter, the mean over the models whose
  trimmed entry is non-zero and has the elected sign; 0 where no model agrees.
  """
  def leaf(t, s):
    agree = (jnp.sign(t) == s[None]) & (t != 0)
    count = agree.sum(0)
    total = jnp.where(agree, t, 0.0).sum(0)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
  return jax.tree.map(leaf, trimmed, signs)


@functools.partial(jax.jit, static_argnames="density")
def ties_merge(taus, density):
  """The merged task vector tau_m of TIES (trim, elect, disjoint mean)."""
  trimmed = ties_trim(taus, density)
  return ties_disjoint_mean(trimmed, ties_elect(trimmed))


@jax.jit
def scaled(theta0, direction, lam):
  """theta_0 + lambda * direction."""
  return jax.tree.map(lambda b, d: b + lam * d, theta0, direction)


@jax.jit
def q_log_likelihood(theta0, direction, lams, zoo_q, sigma):
  """Data-free criterion, one value per lambda in `lams`.

  The mean over Q of Eq. (2)'s log P(theta_q | theta_lambda) =
  -||theta_lambda - theta_q||^2 / sigma^2, with theta_lambda =
  theta_0 + lambda * direction. Higher is better.
  """
  def score(lam):
    cand = scaled(theta0, direction, lam)
    ll = jax.vmap(lambda q: likelihood.gaussian_log_likelihood(cand, q, sigma))(zoo_q)
    return ll.mean()
  return jax.lax.map(score, lams)


def make_zoo_data_score(benchmark, tasks_q, key):
  """Data-based criterion (breaks the data-free setting): minus the mean training
  loss of theta_lambda on one batch of each Q model's own task. Higher is better."""
  keys = jax.random.split(key, jax.tree.leaves(tasks_q)[0].shape[0])

  @jax.jit
  def scores(theta0, direction, lams, data):
    def score(lam):
      cand = scaled(theta0, direction, lam)
      losses = jax.lax.map(
          lambda a: benchmark.loss_fn(cand, benchmark.batch_fn(a[0], a[1], data)),
          (tasks_q, keys))
      return -losses.mean()
    return jax.lax.map(score, lams)
  return scores


# ----------------------------------------------------------------- methods


def shared_base(ctx: base.MethodContext):
  """theta_0, the zoo's shared initialisation, reproduced from config and seed.

  Raises:
    NotApplicable: the zoo models do not share an initialisation.
  """
  if ctx.benchmark.imported_zoo is not None:
    raise NotApplicable(
        "task vectors need the base model every zoo model was fine-tuned from, and an "
        "imported zoo does not carry one (config.zoo.source)")
  if not ctx.config.zoo.shared_init:
    raise NotApplicable(
        "task vectors need a common base model, but config.zoo.shared_init is False: "
        "every zoo model starts from its own random initialisation")
  theta0 = jax.tree.map(lambda x: x[0], zoo_lib.initial_params(ctx.config, ctx.benchmark))
  shapes = jax.tree.map(lambda x: x.shape, theta0)
  if shapes != jax.tree.map(lambda x: x.shape, ctx.template):
    raise NotApplicable("the reproduced shared initialisation does not have the zoo's "
                        "parameter shapes")
  return theta0


def choose_scale(ctx, name, theta0, direction, lams, scales):
  """Picks lambda in `lams` by the configured criterion on Q; logs every score.

  Returns:
    (lambda, index into lams, scores as a numpy array).
  """
  mc = ctx.config[name]
  lams_arr = jnp.asarray(lams, jnp.float32)
  if mc.scale_criterion == "likelihood":
    scores = q_log_likelihood(theta0, direction, lams_arr, ctx.zoo_q,
                              float(ctx.config.fusion.sigma))
  else:
    tasks_q = jax.tree.map(lambda x: jnp.asarray(x)[ctx.q_idx], ctx.benchmark.zoo_tasks)
    score_fn = make_zoo_data_score(ctx.benchmark, tasks_q, jax.random.fold_in(ctx.key, 1))
    scores = score_fn(theta0, direction, lams_arr, ctx.benchmark.data)
  scores = np.asarray(jax.device_get(scores), np.float64)
  if not np.isfinite(scores).any():
    raise NotApplicable(f"{name}: every lambda of the grid gives a non-finite score on Q")
  best = int(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf)))
  log_scalars = {f"{name}/lambda": lams[best], f"{name}/scale": scales[best]}
  for s, v in zip(scales, scores):
    log_scalars[f"{name}/score_scale_{s:g}"] = v
  if ctx.writer is not None:
    ctx.writer.write_scalars(0, log_scalars)
  metrics.log.info("%s: lambda %.4g (scale %g) chosen on Q by %s; scores %s", name,
                   lams[best], scales[best], mc.scale_criterion,
                   ", ".join(f"{s:g}: {v:.5g}" for s, v in zip(scales, scores)))
  if len(lams) > 1 and lams[best] in (min(lams), max(lams)):
    metrics.log.warning("%s: the chosen lambda %.4g is at the edge of the grid; the best "
                        "value may lie outside it (widen config.%s.scales)", name,
                        lams[best], name)
  return lams[best], best, scores


def task_arithmetic_init(ctx: base.MethodContext):
  """theta_0 + lambda * sum_{i in S} tau_i, lambda = scale / |S| chosen on Q."""
  theta0 = shared_base(ctx)
  total = jax.tree.map(lambda t: t.sum(0), task_vectors(ctx.zoo_s, theta0))
  scales = [float(s) for s in ctx.config.task_arithmetic.scales]
  lams = [s / len(ctx.s_idx) for s in scales]
  lam, _, _ = choose_scale(ctx, "task_arithmetic", theta0, total, lams, scales)
  return scaled(theta0, total, lam)


def ties_init(ctx: base.MethodContext):
  """theta_0 + lambda * TIES-merged task vector of S; lambda = scale, chosen on Q."""
  theta0 = shared_base(ctx)
  merged = ties_merge(task_vectors(ctx.zoo_s, theta0), float(ctx.config.ties.density))
  scales = [float(s) for s in ctx.config.ties.scales]
  lam, _, _ = choose_scale(ctx, "ties", theta0, merged, scales, scales)
  return scaled(theta0, merged, lam)


# ----------------------------------------------------------------- validation


def task_arithmetic_defaults():
  """config.task_arithmetic."""
  c = ml_collections.ConfigDict()
  c.scales = (0.25, 0.5, 1.0, 2.0, 4.0)  # lambda = scale / |S|; chosen on Q
  # How lambda is chosen on Q: "likelihood" (data-free, Eq. 2) or "zoo_data" (the loss on
  # the Q models' own training data; not data-free).
  c.scale_criterion = "likelihood"
  return c


def ties_defaults():
  """config.ties."""
  c = ml_collections.ConfigDict()
  c.density = 0.2                       # fraction of each task vector's entries kept (top-k)
  c.scales = (0.0625, 0.125, 0.25, 0.5, 1.0)  # lambda = scale (TIES' multiplier); chosen on Q
  c.scale_criterion = "likelihood"      # as in task_arithmetic
  return c


TA_FIELDS = {"task_arithmetic.scales": checks.POSITIVE_REALS,
             "task_arithmetic.scale_criterion": checks.one_of(CRITERIA)}
TIES_FIELDS = {"ties.scales": checks.POSITIVE_REALS,
               "ties.scale_criterion": checks.one_of(CRITERIA),
               "ties.density": checks.real_in(0, 1, high_closed=True)}


def validate_task_arithmetic(config):
  checks.check(config, TA_FIELDS)


def validate_ties(config):
  checks.check(config, TIES_FIELDS)


def _reads_zoo_data(section):
  """lambda chosen on the Q models' own data ("zoo_data") reads the zoo tasks' data."""
  return lambda config: (section in config
                         and config[section].get("scale_criterion") == "zoo_data")


TASK_ARITHMETIC = base.Method(
    "task_arithmetic", ("baseline",), task_arithmetic_init,
    "task arithmetic (Ilharco et al. 2023): shared init + lambda * sum of task vectors",
    validate_task_arithmetic, uses_task_data=_reads_zoo_data("task_arithmetic"),
    sections={"task_arithmetic": task_arithmetic_defaults}, reads=("fusion.sigma",))
TIES = base.Method(
    "ties", ("baseline",), ties_init,
    "TIES-Merging (Yadav et al. 2023): trim, elect sign, disjoint mean of task vectors",
    validate_ties, uses_task_data=_reads_zoo_data("ties"), sections={"ties": ties_defaults},
    reads=("fusion.sigma",))
