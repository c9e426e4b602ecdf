"""`ota`: OT fusion of the zoo (Singh & Jaggi, "Model Fusion via Optimal
Transport", NeurIPS 2020), data-free, generalised to N models.

The paper fuses networks layer by layer. For layer l of a model A being
aligned to a reference B, with T^(l-1) the previous layer's transport map:

1. align the incoming weights to B's previous layer:
   W_hat_A = W_A T^(l-1) diag(1 / beta^(l-1));
2. ground cost between A's units (rows of W_hat_A) and B's units (rows of W_B):
   squared Euclidean distance of the weight vectors ("weight-based" alignment;
   the paper's alternative uses activations, which need data we do not have);
3. T^(l) = optimal transport between uniform measures alpha, beta over A's and
   B's units with that cost (exact, or entropic: Sinkhorn);
4. aligned weights W_tilde_A = diag(1 / beta^(l)) T^(l)T W_hat_A, then average
   with W_B. The output layer gets step 1 only.

What we do (docs/baselines.md, section ota):

- N models: every zoo model (S and Q, as `va` averages) is aligned to one
  reference model (`ota.align_reference`: the model closest to the zoo's
  mean by default, see `permutations.choose_reference`), and the N aligned
  models are averaged. `ota.align_rounds > 1` aligns every model again to
  the previous round's fused average.
- A unit's support point is everything the layer owns for it: its incoming
  kernel weights (a Conv4 unit is an output channel: the (3, 3, C_in) slice),
  its bias and, for Conv4, its BatchNorm scale and offset; all are transported
  with the unit (`permutations.unit_features(own_only=True)`). The next layer's
  inputs are transported with the same map (the head of Conv4 reads the
  flattened (h, w, C) map, so its rows are transported channel-wise). The cost
  matrix is divided by its mean, so `ot_reg` is relative to a typical cost.
- `ota.reg = 0`: exact OT. With uniform masses and equal widths an
  optimal plan is a permutation (Birkhoff), found by
  `scipy.optimize.linear_sum_assignment`; the aligned model computes exactly the
  function of the original.
- `ota.reg > 0`: entropic OT by log-domain Sinkhorn (`sinkhorn`), a
  jitted `lax.while_loop` that stops once the largest relative marginal error
  |sum / target - 1| is at most SINKHORN_TOL = 1e-3, after at most
  `ota.iters` iterations; a plan still off by more raises
  SinkhornNotConverged (raise ot_iters or ot_reg). M = n T^T (rows sum
  to 1) maps the model's units onto the reference's, and each aligned unit is
  the M-weighted average of the model's units, on both sides of the layer
  (`permutations.apply_transport`): the paper's soft alignment. It is NOT
  function-preserving: an aligned model differs from the original in function,
  and its distance to the hard result shrinks as ot_reg -> 0 (tested).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfl2l_jax import checks
from dfl2l_jax import metrics
from dfl2l_jax import permutations as perm_lib
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.methods import base

def defaults():
  """config.ota."""
  c = ml_collections.ConfigDict()
  c.reg = 0.0                           # 0: exact assignment; > 0: Sinkhorn entropy weight
                                        # (relative to the mean ground cost)
  c.iters = 5000                        # at most this many Sinkhorn iterations (stops at 1e-3)
  c.align_reference = "closest_to_mean"  # model aligned to: closest_to_mean | first (S[0])
  c.align_rounds = 1                    # > 1: realign every model to the last fused average
  return c


FIELDS = {
    "ota.reg": checks.explained(checks.NON_NEGATIVE_REAL, "0: exact assignment"),
    "ota.iters": checks.POSITIVE_INT,
    "ota.align_reference": checks.one_of(perm_lib.REFERENCES),
    "ota.align_rounds": checks.POSITIVE_INT,
}


# Largest relative marginal error |sum / target - 1| of an accepted Sinkhorn plan.
SINKHORN_TOL = 1e-3


class SinkhornNotConverged(ConfigError):
  """Sinkhorn reached `ota.iters` with marginals off by more than the tolerance."""


@functools.partial(jax.jit, static_argnums=2)
def sinkhorn(cost, reg, iters, tol=SINKHORN_TOL):
  """Entropic OT between uniform measures, in the log domain (Cuturi 2013).

  A `lax.while_loop` of Sinkhorn iterations (fit the model's marginal, then the
  reference's) that stops once every problem's marginals are within `tol` of
  their targets, relative: max over rows i and columns j of |n_ref sum_j T_ij - 1|
  and |n_model sum_i T_ij - 1| <= tol (the rows are fitted exactly by the last
  half-iteration, so the columns decide), or after `iters` iterations. The
  caller checks the returned error (`ot_align` raises SinkhornNotConverged when
  it exceeds tol: the matrix would not be a transport plan).

  Args:
    cost: (..., n_ref, n_model) ground cost.
    reg: entropy weight epsilon (> 0), in the units of `cost`.
    iters: at most this many Sinkhorn iterations (static).
    tol: stop when the relative marginal error is at most this (default
      SINKHORN_TOL = 1e-3, i.e. 0.1% of a unit's mass).

  Returns:
    (m, err, n): m, the (..., n_ref, n_model) matrix M = n_ref * T, where T is
    the transport plan with marginals 1/n_ref and 1/n_model (every row of M sums
    to 1 up to float rounding); err, the (...) largest relative marginal error
    of each problem, rows and columns, measured on M (float32 sums: errors
    below ~1e-6 are rounding); n, the iterations run.
  """
  cost = jnp.asarray(cost, jnp.float32)
  n_r, n_m = cost.shape[-2], cost.shape[-1]
  log_a, log_b = -jnp.log(n_r), -jnp.log(n_m)
  batch = cost.shape[:-2]

  def plan(f, g):
    """M = n_ref T and its largest relative marginal error per problem."""
    m = n_r * jnp.exp((f[..., :, None] + g[..., None, :] - cost) / reg)
    err = jnp.maximum(jnp.max(jnp.abs(m.sum(-1) - 1.0), axis=-1),
                      jnp.max(jnp.abs(m.sum(-2) * (n_m / n_r) - 1.0), axis=-1))
    return m, err

  def cond(state):
    _, _, err, it = state
    return (it < iters) & (jnp.max(err) > tol)     # a NaN error stops (and is reported)

  def body(state):
    f, g, _, it = state
    g = reg * log_b - reg * jax.nn.logsumexp((f[..., :, None] - cost) / reg, axis=-2)
    f = reg * log_a - reg * jax.nn.logsumexp((g[..., None, :] - cost) / reg, axis=-1)
    return f, g, plan(f, g)[1], it + 1

  init = (jnp.zeros(cost.shape[:-1]), jnp.zeros(batch + (n_m,)),
          jnp.full(batch, jnp.inf), jnp.asarray(0, jnp.int32))
  f, g, err, n = jax.lax.while_loop(cond, body, init)
  return plan(f, g)[0], err, n


def ot_align(spec, reference, models, reg, iters, tol=SINKHORN_TOL):
  """Aligns every model (leading axis) to `reference`, layer by layer.

  Args:
    spec: the permutations.PermSpec of the architecture.
    reference: one model's parameters.
    models: parameters with a leading model axis N.
    reg: 0 for exact OT (permutations), > 0 for Sinkhorn (soft transport).
    iters: at most this many Sinkhorn iterations per layer.
    tol: the largest relative marginal error accepted from Sinkhorn.

  Returns:
    (aligned models with a leading N axis, dict of per-layer transport: (N, n)
    permutations when reg == 0, else (N, n, n) matrices M).

  Raises:
    SinkhornNotConverged: a layer's Sinkhorn plan has a marginal error above
      `tol` after `iters` iterations.
  """
  aligned, maps, _ = ot_align_with_stats(spec, reference, models, reg, iters, tol)
  return aligned, maps


def ot_align_with_stats(spec, reference, models, reg, iters, tol=SINKHORN_TOL):
  """`ot_align`, also returning {"sinkhorn_iters", "sinkhorn_err"}: the most
  iterations and the largest relative marginal error over the layers (empty
  for exact OT)."""
  if reg == 0:
    perms = perm_lib.exact_ot_perms(spec, reference, models)
    return perm_lib.apply_permutation_batched(spec, perms, models), perms, {}
  n_models = jax.tree.leaves(models)[0].shape[0]
  stats = {}
  maps = {p.name: np.broadcast_to(np.eye(p.size, dtype=np.float32), (n_models, p.size, p.size))
          for p in spec.perms}
  for p in spec.perms:   # layer order: each layer's inputs already carry earlier maps
    feats = perm_lib.transported_features_batched(spec, p.name, True, maps, models)
    ref_feats = perm_lib.features_jit(spec, p.name, True, reference)
    cost = perm_lib.unit_cost(ref_feats, feats)
    m, err, n = jax.device_get(sinkhorn(cost, float(reg), int(iters), float(tol)))
    worst = int(np.argmax(np.where(np.isnan(err), np.inf, err)))
    if not err[worst] <= tol:                # NaN fails too
      raise SinkhornNotConverged(
          f"ota: Sinkhorn did not converge on layer {p.name} (model {worst}): its largest "
          f"relative marginal error is {float(err[worst]):.3g} after {int(n)} iterations "
          f"(ota.iters = {iters}), above the tolerance {tol:g}, so the matrix is not "
          f"a transport plan; raise ota.iters or ota.reg (now {reg:g}), or "
          f"set ota.reg = 0 for exact OT")
    stats["sinkhorn_iters"] = max(stats.get("sinkhorn_iters", 0.0), float(n))
    stats["sinkhorn_err"] = max(stats.get("sinkhorn_err", 0.0), float(np.max(err)))
    maps = dict(maps)
    maps[p.name] = np.asarray(m)
  return perm_lib.apply_transport_batched(spec, maps, models), maps, stats


def ot_fuse(spec, models, ref_idx, reg, iters, rounds=1, tol=SINKHORN_TOL):
  """OT fusion of N models: align all to a reference, average; `rounds` times.

  Round 1's reference is models[ref_idx]; round r > 1 realigns the original
  models to round r-1's fused average. Sinkhorn (reg > 0) runs at most `iters`
  iterations per layer and must reach the relative marginal error `tol`
  (else SinkhornNotConverged).

  Returns:
    (fused parameters as numpy arrays, info dict of floats for logging; with
    Sinkhorn it has the most iterations run and the largest marginal error
    over all layers and rounds, "sinkhorn_iters" and "sinkhorn_err").
  """
  models = jax.device_get(models)
  reference = jax.tree.map(lambda x: x[ref_idx], models)
  info = {"reference": float(ref_idx),
          "dist_before": perm_lib.mean_sq_distance(models, reference)}
  for r in range(rounds):
    aligned, maps, stats = ot_align_with_stats(spec, reference, models, reg, iters, tol)
    for k, v in stats.items():
      info[k] = max(info.get(k, 0.0), v)
    if r == 0:
      info["dist_after"] = perm_lib.mean_sq_distance(aligned, reference)
      if reg == 0 and maps:
        moved = [np.mean(q != np.arange(q.shape[-1])) for q in maps.values()]
        info["units_moved"] = float(np.mean(moved))
    reference = perm_lib.average(aligned)
  return reference, info


def ota_init(ctx: base.MethodContext):
  """theta_init = average of the N zoo models after OT alignment to a reference."""
  mc = ctx.config.ota
  spec = perm_lib.spec_from_params(ctx.template)
  ref_idx = perm_lib.choose_reference(ctx.zoo, ctx.s_idx, mc.align_reference)
  fused, info = ot_fuse(spec, ctx.zoo, ref_idx, float(mc.reg), int(mc.iters),
                        int(mc.align_rounds))
  mode = "exact" if mc.reg == 0 else f"Sinkhorn reg {mc.reg}"
  if "sinkhorn_iters" in info:
    mode += (f", at most {info['sinkhorn_iters']:.0f} of {mc.iters} iterations, marginal "
             f"error {info['sinkhorn_err']:.2g}")
  metrics.log.info(
      "ota (%s): reference model %d (%s), mean squared distance to it %.4g before, %.4g "
      "after alignment%s", mode, ref_idx, mc.align_reference, info["dist_before"],
      info["dist_after"],
      f", {100 * info['units_moved']:.0f}% of hidden units moved"
      if "units_moved" in info else "")
  if ctx.writer is not None:
    ctx.writer.write_scalars(0, {f"ota/{k}": v for k, v in info.items()})
  return jax.tree.map(jnp.asarray, fused)


def validate(config):
  checks.check(config, FIELDS)


OTA = base.Method("ota", ("baseline",), ota_init,
                  "OT fusion (Singh & Jaggi 2020): weight-based layer-wise alignment to a "
                  "reference model, then averaging", validate, sections={"ota": defaults})
