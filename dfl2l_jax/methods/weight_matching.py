"""`weight_matching`: Git Re-Basin weight matching (Ainsworth, Hayase &
Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries",
ICLR 2023, Section 3.2 and Algorithm 1), generalised to N models.

Weight matching looks for the permutations pi of model B's hidden units that
maximise sum over layers <W_A, pi(W_B)>_F, i.e. minimise the parameter distance
|theta_A - pi(theta_B)|^2. The problem is NP-hard jointly; the paper solves it
by coordinate descent: for one permutation P_l with all others fixed, the
objective is linear in P_l, sum_{i,j} (P_l)_{ij} A_l[i, j] with
A_l = sum over every weight touching P_l of W_A (with the other permutations
applied to W_B) W_B^T, a linear assignment problem solved exactly
(`scipy.optimize.linear_sum_assignment`). Permutations are visited in a random
order, sweep after sweep, until a sweep improves nothing.

What we do (docs/baselines.md, section weight_matching):

- N models: every zoo model (S and Q, as `va` averages) is matched to one
  reference model (`weight_matching.align_reference`, the model closest to the zoo's
  mean by default; see `permutations.choose_reference`), and the N permuted
  models are averaged. `weight_matching.align_rounds > 1` matches every model again to
  the previous round's average, warm-started from its permutations (Git
  Re-Basin's MergeMany, Appendix, matches each model to the mean of the others
  repeatedly; this is the same idea with the mean of all).
- Weights touching a permutation (permutations.PermSpec): the layer's kernel
  (its output axis), bias and, for Conv4, BatchNorm scale and offset, plus the
  next layer's kernel (input axis; the Conv4 head's rows channel-wise).
  `permutations.unit_features` stacks them so that A_l = F_ref F_model^T.
- At most `weight_matching.iters` sweeps, each over the permutations in an order
  drawn from the method's key; all N models are matched in the same sweep (the
  assignment matrices of all models come from one batched computation), and
  the loop stops once a sweep improves no model's objective. Stopping at the
  cap while a model still improved logs a warning (raise weight_matching.iters).
- Start: `weight_matching.init = "identity"` (the paper's) or `"ota"`: the
  permutations of exact OT fusion (one forward pass matching each layer's
  incoming weights, given the earlier layers), an option of ours. Coordinate
  descent from the identity can stop at a poor coordinate-wise optimum when
  the models are permuted far apart (measured on random-permutation toy zoos,
  docs/baselines.md); our zoo's models share one initialisation, so the
  identity is already close.
- Weight matching only permutes, so every aligned model computes exactly the
  function of the original.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy.optimize import linear_sum_assignment

from dfl2l_jax import checks
from dfl2l_jax import metrics
from dfl2l_jax import permutations as perm_lib
from dfl2l_jax.methods import base

INITS = ("identity", "ota")


def defaults():
  """config.weight_matching."""
  c = ml_collections.ConfigDict()
  c.iters = 20                          # coordinate-descent sweeps (at most)
  c.init = "identity"                   # start from: identity (the paper's) | ota
  c.align_reference = "closest_to_mean"  # model matched to: closest_to_mean | first (S[0])
  c.align_rounds = 1                    # > 1: match every model again to the last average
  return c


FIELDS = {
    "weight_matching.iters": checks.POSITIVE_INT,
    "weight_matching.init": checks.one_of(INITS),
    "weight_matching.align_reference": checks.one_of(perm_lib.REFERENCES),
    "weight_matching.align_rounds": checks.POSITIVE_INT,
}


def match_weights(spec, reference, models, max_sweeps, key, init_perms=None):
  """Coordinate descent over the permutations of every model (leading axis).

  Args:
    spec: permutations.PermSpec.
    reference: one model's parameters.
    models: parameters with a leading model axis N.
    max_sweeps: at most this many sweeps over all permutations.
    key: PRNG key for the visiting order of each sweep.
    init_perms: optional {name: (N, n)} starting permutations (identity if None).

  Returns:
    (perms {name: (N, n) int32}, number of sweeps run, converged: whether the
    last sweep improved no model). Stopping at `max_sweeps` while a model still
    improved logs a warning (the permutations may not be a coordinate-wise
    optimum; raise weight_matching.iters).
  """
  n_models = jax.tree.leaves(models)[0].shape[0]
  perms = {k: np.array(v, np.int32) for k, v in
           (init_perms or perm_lib.identity_perms(spec, n_models)).items()}
  ref_feats = {p.name: np.asarray(perm_lib.features_jit(spec, p.name, False, reference), np.float64)
               for p in spec.perms}
  sweeps, improved = 0, set()
  for sweep in range(max_sweeps):
    sweeps = sweep + 1
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, sweep), len(spec.perms)))
    improved = set()                        # models whose objective this sweep improved
    for k in order:
      p = spec.perms[int(k)]
      others = dict(perms)
      others[p.name] = np.tile(np.arange(p.size, dtype=np.int32), (n_models, 1))
      feats = np.asarray(
          perm_lib.permuted_features_batched(spec, p.name, False, others, models), np.float64)
      gain = np.einsum("id,njd->nij", ref_feats[p.name], feats)   # A_l of every model
      rows = np.arange(p.size)
      for m in range(n_models):
        old = gain[m, rows, perms[p.name][m]].sum()
        _, cols = linear_sum_assignment(gain[m], maximize=True)
        new = gain[m, rows, cols].sum()
        if new > old + 1e-9 * (1.0 + abs(old)):
          improved.add(m)
          perms[p.name][m] = cols
    if not improved:
      break
  if improved:
    metrics.log.warning(
        "weight_matching: coordinate descent stopped at its cap of %d sweeps "
        "(weight_matching.iters) while %d of %d models still improved in the last sweep; their "
        "permutations may not be a coordinate-wise optimum: raise weight_matching.iters",
        max_sweeps, len(improved), n_models)
  return perms, sweeps, not improved


def wm_fuse(spec, models, ref_idx, max_sweeps, key, rounds=1, init="identity"):
  """Weight matching of N models to a reference, then the average; `rounds` times.

  Args:
    spec: permutations.PermSpec.
    models: parameters with a leading model axis N.
    ref_idx: index of round 1's reference model.
    max_sweeps: at most this many coordinate-descent sweeps per round.
    key: PRNG key for the visiting orders.
    rounds: round r > 1 matches the models to round r-1's average, starting
      from round r-1's permutations.
    init: round 1's starting permutations: "identity" (Git Re-Basin) or "ota"
      (exact OT fusion's layer-wise assignment, permutations.exact_ot_perms).

  Returns:
    (fused parameters as numpy arrays, info dict of floats for logging;
    info["converged"] is 0 when some round stopped at max_sweeps while still
    improving, which match_weights also logs as a warning, else 1).
  """
  models = jax.device_get(models)
  reference = jax.tree.map(lambda x: x[ref_idx], models)
  info = {"reference": float(ref_idx),
          "dist_before": perm_lib.mean_sq_distance(models, reference)}
  perms = None
  if init == "ota":
    perms = perm_lib.exact_ot_perms(spec, reference, models)
  elif init != "identity":
    raise ValueError(f"init must be one of {INITS}, got {init!r}")
  for r in range(rounds):
    perms, sweeps, converged = match_weights(spec, reference, models, max_sweeps,
                                             jax.random.fold_in(key, r), perms)
    aligned = perm_lib.apply_permutation_batched(spec, perms, models)
    info["converged"] = min(info.get("converged", 1.0), float(converged))
    if r == 0:
      info["dist_after"] = perm_lib.mean_sq_distance(aligned, reference)
      info["sweeps"] = float(sweeps)
      if perms:
        info["units_moved"] = float(np.mean(
            [np.mean(q != np.arange(q.shape[-1])) for q in perms.values()]))
    reference = perm_lib.average(aligned)
  return reference, info


def weight_matching_init(ctx: base.MethodContext):
  """theta_init = average of the N zoo models after weight matching to a reference."""
  mc = ctx.config.weight_matching
  spec = perm_lib.spec_from_params(ctx.template)
  ref_idx = perm_lib.choose_reference(ctx.zoo, ctx.s_idx, mc.align_reference)
  fused, info = wm_fuse(spec, ctx.zoo, ref_idx, int(mc.iters), ctx.key,
                        int(mc.align_rounds), mc.init)
  metrics.log.info(
      "weight_matching: reference model %d (%s), start %s, %d sweeps, mean squared "
      "distance to it %.4g before, %.4g after matching%s", ref_idx, mc.align_reference,
      mc.init, info["sweeps"], info["dist_before"], info["dist_after"],
      f", {100 * info['units_moved']:.0f}% of hidden units moved"
      if "units_moved" in info else "")
  if ctx.writer is not None:
    ctx.writer.write_scalars(0, {f"weight_matching/{k}": v for k, v in info.items()})
  return jax.tree.map(jnp.asarray, fused)


def validate(config):
  checks.check(config, FIELDS)


WEIGHT_MATCHING = base.Method(
    "weight_matching", ("baseline",), weight_matching_init,
    "Git Re-Basin weight matching (Ainsworth et al. 2023) to a reference model, then "
    "averaging", validate, sections={"weight_matching": defaults})
