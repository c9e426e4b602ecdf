"""Name tables between our Flax parameters and other frameworks' state dicts.

A layout is a table, one row per tensor of our Conv4: our flat name (store.py's
"params/Conv_0/kernel"), the state-dict name(s) it has in the other framework, and the
transform between the two:

  conv   PyTorch's conv weight (out, in, 3, 3) <-> our kernel (3, 3, in, out)
  head   PyTorch's Linear weight (ways, C*H*W) over a feature map flattened in (C, H, W)
         order <-> our Dense kernel (H*W*C, ways) over the map flattened in (H, W, C)
         order (we compute in NHWC)
  copy   the same vector (biases, BatchNorm scale/shift/statistics)

A state dict is matched to a table exactly: every name present, nothing else (names the
layout `ignores`, such as PyTorch's `num_batches_tracked`, excepted), every shape as the
table expects; several names for one tensor (the CloserLook ConvNet registers each
block's layers twice) must hold equal tensors. Otherwise ZooError lists the unmatched and
missing names. docs/zoo_format.md prints each table.

Layouts:
  dfml   the Conv4 teachers of FREE / TGR / PURER(-Plus) / BiDf-MKD / Trustworthy-DFML:
         the CloserLook `ConvNet` with a linear head; block i's conv and BatchNorm under
         `trunk.{i}.C.*` and `trunk.{i}.trunk.0.*`, `trunk.{i}.BN.*` and `trunk.{i}.trunk.1.*`,
         the head `trunk.5.*` (index 4 is the Flatten).
  l2l    learn2learn's `CNN4` (`features.{i}.conv.*`, `features.{i}.normalize.*`,
         `classifier.*`).
  ours   our own flat names, unchanged.
"""

import dataclasses
from typing import Tuple

import numpy as np

from dfl2l_jax.errors import ZooError

LAYOUTS = ("dfml", "l2l", "ours")
BLOCKS = 4


@dataclasses.dataclass(frozen=True)
class Row:
  ours: str
  theirs: Tuple[str, ...]
  kind: str  # conv | head | copy


def _block_names(layout, i):
  """(conv names, BatchNorm names) of block i: prefixes, aliases included."""
  if layout == "dfml":
    return (f"trunk.{i}.C", f"trunk.{i}.trunk.0"), (f"trunk.{i}.BN", f"trunk.{i}.trunk.1")
  if layout == "l2l":
    return (f"features.{i}.conv",), (f"features.{i}.normalize",)
  raise ZooError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def _head_name(layout):
  return {"dfml": "trunk.5", "l2l": "classifier"}[layout]


def table(layout, running_stats):
  """The rows of `layout` for a Conv4; `running_stats`: whether BatchNorm statistics are
  part of the model (PyTorch's running_mean / running_var)."""
  rows = []
  for i in range(BLOCKS):
    convs, bns = _block_names(layout, i)
    rows.append(Row(f"params/Conv_{i}/kernel", tuple(f"{c}.weight" for c in convs), "conv"))
    rows.append(Row(f"params/Conv_{i}/bias", tuple(f"{c}.bias" for c in convs), "copy"))
    rows.append(Row(f"params/BatchNorm_{i}/scale", tuple(f"{b}.weight" for b in bns), "copy"))
    rows.append(Row(f"params/BatchNorm_{i}/bias", tuple(f"{b}.bias" for b in bns), "copy"))
    if running_stats:
      rows.append(Row(f"batch_stats/BatchNorm_{i}/mean",
                      tuple(f"{b}.running_mean" for b in bns), "copy"))
      rows.append(Row(f"batch_stats/BatchNorm_{i}/var",
                      tuple(f"{b}.running_var" for b in bns), "copy"))
  head = _head_name(layout)
  rows.append(Row("params/Dense_0/kernel", (f"{head}.weight",), "head"))
  rows.append(Row("params/Dense_0/bias", (f"{head}.bias",), "copy"))
  return rows


def ignored(layout, running_stats):
  """State-dict names a layout reads past (and writes on export): BatchNorm's counters."""
  if not running_stats:
    return ()
  return tuple(f"{b}.num_batches_tracked" for i in range(BLOCKS)
               for b in _block_names(layout, i)[1])


def _to_ours(kind, value, feature_map):
  if kind == "conv":
    return value.transpose(2, 3, 1, 0)
  if kind == "head":
    ways, n_in = value.shape
    c = n_in // (feature_map * feature_map)
    return value.reshape(ways, c, feature_map, feature_map).transpose(2, 3, 1, 0).reshape(
        n_in, ways)
  return value


def _to_theirs(kind, value, feature_map):
  if kind == "conv":
    return value.transpose(3, 2, 0, 1)
  if kind == "head":
    n_in, ways = value.shape
    c = n_in // (feature_map * feature_map)
    return value.reshape(feature_map, feature_map, c, ways).transpose(3, 2, 0, 1).reshape(
        ways, n_in)
  return value


def their_shape(kind, shape):
  if kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "head":
    return (shape[1], shape[0])
  return shape


def feature_map_size(image_size):
  """The side of Conv4's last feature map: four 2x2 max-pools, trailing rows dropped."""
  return image_size // 16


def infer_conv4(where, state_dict, layout, image_size):
  """(filters, ways, running_stats) of the Conv4 a state dict of `layout` holds, checked
  against `image_size`; ZooError naming `where` when the dict fits no Conv4 of the layout."""
  convs, bns = _block_names(layout, 0)
  first, head = f"{convs[0]}.weight", f"{_head_name(layout)}.weight"
  for name in (first, head):
    if name not in state_dict:
      near = sorted(state_dict)[:8]
      raise ZooError(f"{where}: no {name} for the {layout} layout (the file's first "
                     f"names: {near}); is --format right?")
  w, h = np.shape(state_dict[first]), np.shape(state_dict[head])
  if len(w) != 4 or w[1] != 3 or len(h) != 2:
    raise ZooError(f"{where}: {first} has shape {tuple(w)} and {head} {tuple(h)}, not a "
                   "Conv4 on RGB images (conv (out, 3, 3, 3), head (ways, features))")
  filters, ways = int(w[0]), int(h[0])
  f = feature_map_size(image_size)
  if h[1] != filters * f * f:
    raise ZooError(f"{where}: the head takes {h[1]} features, but a Conv4 of width "
                   f"{filters} on {image_size}x{image_size} images gives {filters * f * f}; "
                   "is --image_size right?")
  running = f"{bns[0]}.running_mean" in state_dict
  return filters, ways, running


def import_state_dict(where, state_dict, layout, expected, image_size):
  """Our flat {name: float32 array} from `state_dict` ({name: array}) of `layout`.

  `expected`: {our flat name: shape} (store.expected_shapes); whether BatchNorm
  statistics are part of the model follows from it. Exact match or ZooError naming
  `where`.
  """
  if layout == "ours":
    return {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  running = any(k.startswith("batch_stats/") for k in expected)
  rows = table(layout, running)
  wanted = {n for r in rows for n in r.theirs}
  skip = set(ignored(layout, running))
  missing = sorted(wanted - set(state_dict))
  unmatched = sorted(set(state_dict) - wanted - skip)
  if missing or unmatched:
    raise ZooError(f"{where}: does not fit the {layout} layout: unmatched names "
                   f"{unmatched[:8]}{' ...' if len(unmatched) > 8 else ''}, missing "
                   f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
  fmap = feature_map_size(image_size)
  out = {}
  for r in rows:
    value = np.asarray(state_dict[r.theirs[0]])
    for alias in r.theirs[1:]:
      other = np.asarray(state_dict[alias])
      if other.shape != value.shape or not np.array_equal(other, value, equal_nan=True):
        raise ZooError(f"{where}: {alias} and {r.theirs[0]} name one tensor in the "
                       f"{layout} layout but hold different values")
    shape = their_shape(r.kind, expected[r.ours])
    if value.shape != shape:
      raise ZooError(f"{where}: {r.theirs[0]} has shape {value.shape}, expected {shape}")
    if not np.issubdtype(value.dtype, np.floating):
      raise ZooError(f"{where}: {r.theirs[0]} has dtype {value.dtype}, expected floating "
                     "point")
    out[r.ours] = np.ascontiguousarray(_to_ours(r.kind, value.astype(np.float32), fmap))
  return out


def export_state_dict(flat, layout, image_size):
  """`layout`'s state dict ({name: array}, aliases and counters included) of one model's
  flat parameters (and BatchNorm statistics, if `flat` holds them)."""
  if layout == "ours":
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}
  running = any(k.startswith("batch_stats/") for k in flat)
  fmap = feature_map_size(image_size)
  out = {}
  for r in table(layout, running):
    value = np.ascontiguousarray(_to_theirs(r.kind, np.asarray(flat[r.ours], np.float32),
                                            fmap))
    for name in r.theirs:
      out[name] = value
  for name in ignored(layout, running):
    out[name] = np.zeros((), np.int64)
  return out
