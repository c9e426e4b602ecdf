"""Permutation symmetries of the target networks, for the alignment baselines.

Permuting the hidden units of a layer -- the output columns of its kernel, its
bias, its BatchNorm scale and offset -- together with the matching input rows of
the next layer leaves the network's function unchanged (Hecht-Nielsen 1990;
the symmetry that OT fusion, Singh & Jaggi 2020, and Git Re-Basin, Ainsworth
et al. 2023, undo before averaging). This module describes those symmetries for
our networks and applies them:

- `spec_from_params` reads a parameter pytree of `models.MLP` or
  `models.Conv4` and returns a `PermSpec`: one hidden permutation per hidden
  layer, with every (leaf, axis) it acts on. The output/head layer's units are
  never permuted. Any other tree raises `errors.NotApplicable`.
- `apply_permutation` (hard, function-preserving) and `apply_transport` (soft:
  each new unit a convex combination of old units, OT fusion's aligned weights)
  act on one model; the `*_batched` versions act on a zoo with a leading model
  axis, each model with its own permutations.
- `unit_features` stacks, for one permutation, every parameter attached to each
  unit into one row per unit: the ground cost of OT fusion and the linear
  assignment objective of weight matching are both built from these rows.
- `choose_reference`, `mean_sq_distance`, `average`, `unit_cost`, `assignment`
  and `exact_ot_perms` (exact OT fusion's layer-wise alignment, also weight
  matching's "ota" start) are shared by methods/ot_fusion.py and
  methods/weight_matching.py.

Conventions. A permutation `perm` of n units maps the reference's unit order
onto a model's: after `apply_permutation`, unit i of the result is unit
`perm[i]` of the input. A transport matrix `M` (n_ref, n_model) has rows that
sum to 1 and makes unit i of the result `sum_j M[i, j] * unit j`; the
permutation matrix `M[i, perm[i]] = 1` gives `apply_permutation` again.

Conv4 layout: a kernel is (3, 3, C_in, C_out), so a channel permutation acts on
axis 3 of its own kernel and axis 2 of the next; after the last block the
(h, w, C) map is flattened row-major, so the head's input rows are read as
(h * w, C) and permuted channel-wise on the trailing C (`Axis.blocks = h * w`).
"""

import dataclasses
import functools
import re
from typing import Dict, Mapping, Tuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from dfl2l_jax.errors import ConfigError, NotApplicable

REFERENCES = ("closest_to_mean", "first")


@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of one parameter leaf that a permutation acts on.

  Attributes:
    path: the leaf's path in the parameter tree, e.g. ("Conv_1", "kernel").
    axis: the axis of the leaf.
    own: True for the layer's own parameters of the unit (kernel output axis,
      bias, BatchNorm scale and offset: what the unit computes); False for the
      next layer's input axis (what reads the unit).
    blocks: the axis has `blocks * n` entries read row-major as (blocks, n);
      the permutation acts on n (the channels of a flattened feature map).
  """
  path: Tuple[str, ...]
  axis: int
  own: bool
  blocks: int = 1


@dataclasses.dataclass(frozen=True)
class Perm:
  """A hidden permutation: its name (the layer whose units it permutes), size, axes."""
  name: str
  size: int
  axes: Tuple[Axis, ...]


@dataclasses.dataclass(frozen=True)
class PermSpec:
  """The hidden permutations of one architecture, in layer order (input to output).

  Hashable, so it is a static argument of the jitted functions below.
  """
  arch: str
  perms: Tuple[Perm, ...]

  @property
  def names(self):
    return tuple(p.name for p in self.perms)

  def perm(self, name):
    for p in self.perms:
      if p.name == name:
        return p
    raise KeyError(f"no permutation {name!r} in {self.arch} spec; known: {self.names}")


# ----------------------------------------------------------------- the spec


def _flat(params):
  return flax.traverse_util.flatten_dict(params)


def _unflat(flat):
  return flax.traverse_util.unflatten_dict(flat)


def _numbered(modules, prefix):
  """Indices k of modules named prefix_k, checked to be 0..K-1."""
  ks = sorted(int(m[len(prefix) + 1:]) for m in modules
              if re.fullmatch(rf"{prefix}_\d+", m))
  if ks != list(range(len(ks))):
    raise NotApplicable(f"layers {prefix}_k are not numbered 0..K-1: {ks}")
  return len(ks)


def _unknown(flat, why):
  names = sorted({"/".join(k) for k in flat})
  return NotApplicable(
      "permutation alignment (ota, weight_matching) knows the parameter trees of "
      "models.MLP (Dense_0..Dense_L with kernel, bias) and models.Conv4 (Conv_i kernel, bias; "
      f"BatchNorm_i scale, bias; Dense_0 head); this tree is neither ({why}); its leaves: "
      f"{', '.join(names)}")


def spec_from_params(params) -> PermSpec:
  """The hidden permutations of one model's parameter pytree (no model axis).

  Raises:
    NotApplicable: the tree is not that of models.MLP or models.Conv4, or its
      shapes are inconsistent.
  """
  flat = {k: np.shape(v) for k, v in _flat(params).items()}
  if any(len(k) != 2 for k in flat):
    raise _unknown(flat, "leaves are not module/parameter pairs")
  modules = {k[0] for k in flat}
  has = lambda m, leaves: all((m, leaf) in flat for leaf in leaves)  # noqa: E731
  n_dense = _numbered(modules, "Dense")
  if modules == {f"Dense_{i}" for i in range(n_dense)} and n_dense >= 1:
    return _mlp_spec(flat, n_dense, has)
  n_conv = _numbered(modules, "Conv")
  n_bn = _numbered(modules, "BatchNorm")
  expected = ({f"Conv_{i}" for i in range(n_conv)} | {f"BatchNorm_{i}" for i in range(n_conv)}
              | {"Dense_0"})
  if n_conv >= 1 and n_bn == n_conv and modules == expected:
    return _conv_spec(flat, n_conv, has)
  raise _unknown(flat, f"modules {sorted(modules)}")


def _mlp_spec(flat, n_dense, has):
  perms = []
  for i in range(n_dense):
    m = f"Dense_{i}"
    if not has(m, ("kernel", "bias")) or len(flat[(m, "kernel")]) != 2 or \
        flat[(m, "bias")] != flat[(m, "kernel")][1:]:
      raise _unknown(flat, f"{m} is not a dense layer with kernel (in, out) and bias (out,)")
    if i > 0 and flat[(m, "kernel")][0] != flat[(f"Dense_{i - 1}", "kernel")][1]:
      raise _unknown(flat, f"{m}'s input width does not match Dense_{i - 1}'s output width")
  for i in range(n_dense - 1):   # the last Dense is the output layer: never permuted
    m, nxt = f"Dense_{i}", f"Dense_{i + 1}"
    n = flat[(m, "kernel")][1]
    perms.append(Perm(m, n, (Axis((m, "kernel"), 1, True), Axis((m, "bias"), 0, True),
                             Axis((nxt, "kernel"), 0, False))))
  return PermSpec("mlp", tuple(perms))


def _conv_spec(flat, n_conv, has):
  perms = []
  prev = None
  for i in range(n_conv):
    c, b = f"Conv_{i}", f"BatchNorm_{i}"
    if not has(c, ("kernel", "bias")) or not has(b, ("scale", "bias")):
      raise _unknown(flat, f"{c} needs kernel and bias, {b} scale and bias")
    k = flat[(c, "kernel")]
    if len(k) != 4 or (prev is not None and k[2] != prev):
      raise _unknown(flat, f"{c}/kernel {k} is not (kh, kw, C_in, C_out) matching the "
                     "previous block")
    cout = k[3]
    if any(flat[leaf] != (cout,) for leaf in ((c, "bias"), (b, "scale"), (b, "bias"))):
      raise _unknown(flat, f"{c}/bias, {b}/scale, {b}/bias must all have shape ({cout},)")
    prev = cout
  head = flat.get(("Dense_0", "kernel"))
  if (head is None or ("Dense_0", "bias") not in flat or len(head) != 2
      or head[0] % prev != 0):
    raise _unknown(flat, f"the head Dense_0/kernel {head} does not read a flattened "
                   f"(h, w, {prev}) map")
  for i in range(n_conv):
    c, b = f"Conv_{i}", f"BatchNorm_{i}"
    n = flat[(c, "kernel")][3]
    axes = [Axis((c, "kernel"), 3, True), Axis((c, "bias"), 0, True),
            Axis((b, "scale"), 0, True), Axis((b, "bias"), 0, True)]
    if i + 1 < n_conv:
      axes.append(Axis((f"Conv_{i + 1}", "kernel"), 2, False))
    else:
      axes.append(Axis(("Dense_0", "kernel"), 0, False, blocks=head[0] // n))
    perms.append(Perm(c, n, tuple(axes)))
  return PermSpec("conv4", tuple(perms))


# ----------------------------------------------------------------- acting on parameters


def _split(x, ax: Axis, n):
  """The leaf with `ax` exposed as its own axis of size n; returns (view, axis, undo)."""
  if ax.blocks == 1:
    return x, ax.axis, lambda y: y
  shape = x.shape
  view = x.reshape(shape[:ax.axis] + (ax.blocks, n) + shape[ax.axis + 1:])
  return view, ax.axis + 1, lambda y: y.reshape(shape)


def apply_permutation(spec: PermSpec, perms: Mapping[str, jax.Array], params):
  """Permutes the hidden units of one model: unit i becomes unit perms[name][i].

  Names missing from `perms` are left alone. Function-preserving (tested in
  tests/test_permutations.py).
  """
  flat = dict(_flat(params))
  for p in spec.perms:
    if p.name not in perms:
      continue
    idx = jnp.asarray(perms[p.name])
    for ax in p.axes:
      view, axis, undo = _split(flat[ax.path], ax, p.size)
      flat[ax.path] = undo(jnp.take(view, idx, axis=axis))
  return _unflat(flat)


def apply_transport(spec: PermSpec, mats: Mapping[str, jax.Array], params):
  """Soft alignment of one model: unit i becomes sum_j mats[name][i, j] * unit j.

  Used on both sides of a layer, as OT fusion's aligned weights (Singh & Jaggi
  2020, Section 4: the layer's rows become diag(1/beta) T^T W, the next layer's
  columns W T diag(1/beta); here M = n T^T with rows summing to 1). With a
  permutation matrix it equals `apply_permutation`; otherwise it mixes units
  and does not preserve the function.
  """
  flat = dict(_flat(params))
  for p in spec.perms:
    if p.name not in mats:
      continue
    m = jnp.asarray(mats[p.name])
    for ax in p.axes:
      view, axis, undo = _split(flat[ax.path], ax, p.size)
      moved = jnp.tensordot(m.astype(view.dtype), view, axes=([1], [axis]))
      flat[ax.path] = undo(jnp.moveaxis(moved, 0, axis))
  return _unflat(flat)


@functools.partial(jax.jit, static_argnums=0)
def apply_permutation_batched(spec, perms, models):
  """`apply_permutation` per model: perms[name] is (N, n), models have a leading N axis."""
  return jax.vmap(lambda q, m: apply_permutation(spec, q, m))(perms, models)


@functools.partial(jax.jit, static_argnums=0)
def apply_transport_batched(spec, mats, models):
  """`apply_transport` per model: mats[name] is (N, n, n)."""
  return jax.vmap(lambda q, m: apply_transport(spec, q, m))(mats, models)


def unit_features(spec: PermSpec, name: str, params, own_only=False):
  """(n, d): one row per unit of permutation `name`, every parameter attached to it.

  Rows concatenate, over the permutation's axes (only the layer's own ones when
  `own_only`), the leaf with that axis moved first and the rest flattened. So
  (F_a F_b^T)[i, j] = sum over the axes of <unit i of a, unit j of b>, Git
  Re-Basin's assignment matrix for this permutation; with `own_only` the rows
  (incoming weights, bias, BatchNorm scale and offset) are OT fusion's
  weight-based support points.
  """
  p = spec.perm(name)
  flat = _flat(params)
  rows = []
  for ax in p.axes:
    if own_only and not ax.own:
      continue
    view, axis, _ = _split(flat[ax.path], ax, p.size)
    rows.append(jnp.moveaxis(view, axis, 0).reshape(p.size, -1))
  return jnp.concatenate(rows, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def features_jit(spec, name, own_only, params):
  """Jitted `unit_features` of one model (no eager op-by-op compilation)."""
  return unit_features(spec, name, params, own_only)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def permuted_features_batched(spec, name, own_only, perms, models):
  """unit_features of every model after `apply_permutation` with its perms: (N, n, d)."""
  def one(q, m):
    return unit_features(spec, name, apply_permutation(spec, q, m), own_only)
  return jax.vmap(one)(perms, models)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def transported_features_batched(spec, name, own_only, mats, models):
  """unit_features of every model after `apply_transport` with its matrices: (N, n, d)."""
  def one(q, m):
    return unit_features(spec, name, apply_transport(spec, q, m), own_only)
  return jax.vmap(one)(mats, models)


def identity_perms(spec: PermSpec, n_models=None) -> Dict[str, np.ndarray]:
  """Identity permutations, (n,) each, or (n_models, n) when n_models is given."""
  out = {}
  for p in spec.perms:
    ident = np.arange(p.size, dtype=np.int32)
    out[p.name] = ident if n_models is None else np.tile(ident, (n_models, 1))
  return out


def random_perms(spec: PermSpec, seed, n_models=None) -> Dict[str, np.ndarray]:
  """Uniformly random permutations of every hidden layer (for tests and benchmarks)."""
  rng = np.random.default_rng(seed)
  out = {}
  for p in spec.perms:
    if n_models is None:
      out[p.name] = rng.permutation(p.size).astype(np.int32)
    else:
      out[p.name] = np.stack([rng.permutation(p.size) for _ in range(n_models)]).astype(np.int32)
  return out


def permutation_matrix(perm, dtype=np.float32):
  """M with M[i, perm[i]] = 1 (batched over leading axes)."""
  perm = np.asarray(perm)
  return (perm[..., :, None] == np.arange(perm.shape[-1])).astype(dtype)


# ----------------------------------------------------------------- shared by the methods


def choose_reference(zoo, s_idx, how):
  """Index into the zoo of the model every other model is aligned to.

  "closest_to_mean": the model nearest (Euclidean, all parameters) to the
  element-wise mean of the zoo, which is the model with the smallest sum of
  squared distances to all others (sum_j |x_i - x_j|^2 = N |x_i - mean|^2 +
  const): the most central model, independent of the order of S. "first":
  S[0], the first meta-training model.
  """
  if how == "first":
    return int(s_idx[0])
  if how != "closest_to_mean":
    raise ConfigError(f"align_reference must be one of {REFERENCES}, "
                      f"got {how!r}")
  sq = [((x - x.mean(0)) ** 2).reshape(x.shape[0], -1).sum(1)
        for x in jax.tree.leaves(jax.device_get(zoo))]
  return int(np.argmin(sum(np.asarray(q, np.float64) for q in sq)))


def mean_sq_distance(models, reference):
  """Mean over models of the squared parameter distance to `reference` (host numpy)."""
  models, reference = jax.device_get((models, reference))
  sq = [((np.asarray(x, np.float64) - np.asarray(r)[None]) ** 2).reshape(x.shape[0], -1).sum(1)
        for x, r in zip(jax.tree.leaves(models), jax.tree.leaves(reference))]
  return float(np.mean(sum(sq)))


def average(models):
  """The element-wise mean over the leading model axis (host numpy, float32)."""
  return jax.tree.map(lambda x: np.asarray(x).mean(0, dtype=np.float64).astype(x.dtype),
                      jax.device_get(models))


def pairwise_sq_dists(ref_f, model_f):
  """(N, n_ref, n_model) squared Euclidean distances between units, float64 on host."""
  r = np.asarray(ref_f, np.float64)
  m = np.asarray(model_f, np.float64)
  d = ((r * r).sum(-1)[None, :, None] + (m * m).sum(-1)[:, None, :]
       - 2.0 * np.einsum("id,njd->nij", r, m))
  return np.maximum(d, 0.0)


def normalise_cost(cost):
  """Each cost matrix divided by its mean (1 where the mean is 0)."""
  mean = cost.mean(axis=(-2, -1), keepdims=True)
  return cost / np.where(mean > 0, mean, 1.0)


def unit_cost(ref_feats, feats):
  """OT fusion's ground cost: squared distances between the reference's units and each
  model's (rows of `unit_features`), each matrix divided by its mean."""
  return normalise_cost(pairwise_sq_dists(ref_feats, feats))


def assignment(cost):
  """Exact OT with uniform masses: perm[n, i] = model unit matched to reference unit i."""
  out = np.empty(cost.shape[:2], np.int32)
  for k in range(cost.shape[0]):
    rows, cols = linear_sum_assignment(cost[k])
    out[k, rows] = cols
  return out


def exact_ot_perms(spec, reference, models):
  """Exact OT fusion's alignment of every model (leading axis) to `reference`.

  Layer by layer, each model's units (their own parameters, inputs already
  permuted by the earlier layers) are matched to the reference's by linear
  assignment on `unit_cost`: with uniform masses and equal widths an optimal
  transport plan is a permutation (Birkhoff). Returns {name: (N, n) int32}.
  """
  n_models = jax.tree.leaves(models)[0].shape[0]
  perms = identity_perms(spec, n_models)
  for p in spec.perms:   # layer order: each layer's inputs already carry earlier maps
    feats = permuted_features_batched(spec, p.name, True, perms, models)
    ref_feats = features_jit(spec, p.name, True, reference)
    perms = dict(perms)
    perms[p.name] = assignment(unit_cost(ref_feats, feats))
  return perms
