"""Name tables between our Flax parameters and other frameworks' state dicts.

A layout is a table, one row per tensor of one of our networks (`ARCHS`): our flat name
(store.py's "params/Conv_0/kernel"), the state-dict name(s) it has in the other
framework, and the transform between the two:

  conv    PyTorch's conv weight (out, in, kh, kw) <-> our kernel (kh, kw, in, out)
  head    Conv4's head: PyTorch's Linear weight (ways, C*H*W) over a feature map
          flattened in (C, H, W) order <-> our Dense kernel (H*W*C, ways) over the map
          flattened in (H, W, C) order (we compute in NHWC)
  linear  a head after global average pooling: PyTorch's Linear weight (ways, C) <-> our
          Dense kernel (C, ways) (no flatten order to permute)
  copy    the same vector (biases, BatchNorm scale/shift/statistics)

A state dict is matched to a table exactly: every name present, nothing else (names the
layout `ignores`, such as PyTorch's `num_batches_tracked`, excepted), every shape as the
table expects; several names for one tensor (the CloserLook ConvNet registers each
block's layers twice) must hold equal tensors. Otherwise ZooError lists the unmatched and
missing names. docs/zoo_format.md prints each table.

Layouts (`ARCH_LAYOUTS`: which architecture has which):
  dfml   the field's CloserLook networks (FREE / TGR / PURER(-Plus) / BiDf-MKD /
         Trustworthy-DFML, `network.py`):
         conv4: the `ConvNet` with a linear head; block i's conv and BatchNorm under
           `trunk.{i}.C.*` and `trunk.{i}.trunk.0.*`, `trunk.{i}.BN.*` and
           `trunk.{i}.trunk.1.*`, the head `trunk.5.*` (index 4 is the Flatten).
         resnet10, resnet18: `ResNet(SimpleBlock, [1,1,1,1] or [2,2,2,2], ...)`: the stem
           `trunk.0.weight` (conv) and `trunk.1.*` (BatchNorm); block j (0..) as
           `trunk.{j+2}.{C1,BN1,C2,BN2}.*`, and where the width changes (the first block of
           stages 2-4) `trunk.{j+2}.shortcut.weight` (1x1 conv) and `trunk.{j+2}.BNshortcut.*`;
           the head `trunk.{blocks+4}.*` (trunk.8 / trunk.12: the AdaptiveAvgPool2d and the
           Flatten come before it). No name twice.
  l2l    learn2learn:
         conv4: `CNN4` (`features.{i}.conv.*`, `features.{i}.normalize.*`, `classifier.*`).
         resnet12: `ResNet12` (learnables/learn2learn, learn2learn/vision/models/resnet12.py,
           as released in v0.1.6, from MetaOptNet): block i (0..3) as
           `features.layer{i+1}.0.{conv1,bn1,conv2,bn2,conv3,bn3}.*` and its shortcut
           `features.layer{i+1}.0.downsample.0.weight` (1x1 conv) and
           `features.layer{i+1}.0.downsample.1.*` (BatchNorm); the head `classifier.*`.
           Its DropBlock holds no tensor and is the identity in eval mode. Its pooling is
           `AvgPool2d(5, stride=1)`, a global average only where the last map is 5x5
           (images of 80 to 95 pixels, Mini-ImageNet's 84 included); ours averages
           globally, so other image sizes are refused.
  ours   our own flat names, unchanged.
"""

import dataclasses
from typing import Tuple

import numpy as np

from dfl2l_jax.errors import ZooError

LAYOUTS = ("dfml", "l2l", "ours")
BLOCKS = 4
ARCHS = ("conv4", "resnet10", "resnet18", "resnet12")
ARCH_LAYOUTS = {"conv4": ("dfml", "l2l"), "resnet10": ("dfml",), "resnet18": ("dfml",),
                "resnet12": ("l2l",)}
# Blocks per stage of the CloserLook ResNets (models.RESNET_BLOCKS, by name).
RESNET_BLOCKS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}


@dataclasses.dataclass(frozen=True)
class Row:
  ours: str
  theirs: Tuple[str, ...]
  kind: str  # conv | head | linear | copy


def _block_names(layout, i):
  """(conv names, BatchNorm names) of block i: prefixes, aliases included."""
  if layout == "dfml":
    return (f"trunk.{i}.C", f"trunk.{i}.trunk.0"), (f"trunk.{i}.BN", f"trunk.{i}.trunk.1")
  if layout == "l2l":
    return (f"features.{i}.conv",), (f"features.{i}.normalize",)
  raise ZooError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def _head_name(layout):
  return {"dfml": "trunk.5", "l2l": "classifier"}[layout]


def _check_arch(layout, arch):
  if arch not in ARCHS:
    raise ZooError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
  if layout in LAYOUTS and layout != "ours" and layout not in ARCH_LAYOUTS[arch]:
    raise ZooError(f"the {layout} layout has no {arch}; layouts of {arch}: "
                   f"{', '.join(ARCH_LAYOUTS[arch] + ('ours',))}")


def _bn_rows(ours, theirs, running_stats):
  """The rows of one BatchNorm: our module path, their module names (aliases)."""
  rows = [Row(f"params/{ours}/scale", tuple(f"{b}.weight" for b in theirs), "copy"),
          Row(f"params/{ours}/bias", tuple(f"{b}.bias" for b in theirs), "copy")]
  if running_stats:
    rows.append(Row(f"batch_stats/{ours}/mean", tuple(f"{b}.running_mean" for b in theirs),
                    "copy"))
    rows.append(Row(f"batch_stats/{ours}/var", tuple(f"{b}.running_var" for b in theirs),
                    "copy"))
  return rows


def _conv4_table(layout, running_stats):
  rows = []
  for i in range(BLOCKS):
    convs, bns = _block_names(layout, i)
    rows.append(Row(f"params/Conv_{i}/kernel", tuple(f"{c}.weight" for c in convs), "conv"))
    rows.append(Row(f"params/Conv_{i}/bias", tuple(f"{c}.bias" for c in convs), "copy"))
    rows += _bn_rows(f"BatchNorm_{i}", bns, running_stats)
  head = _head_name(layout)
  rows.append(Row("params/Dense_0/kernel", (f"{head}.weight",), "head"))
  rows.append(Row("params/Dense_0/bias", (f"{head}.bias",), "copy"))
  return rows


def resnet_shortcuts(arch):
  """Per block of the CloserLook ResNet `arch`: whether it has a 1x1 conv shortcut (the
  first block of stages 2-4, where the width changes)."""
  return [stage >= 1 and b == 0 for stage, n in enumerate(RESNET_BLOCKS[arch])
          for b in range(n)]


def _resnet_table(arch, running_stats):
  """models.ResNet <-> the CloserLook `ResNet(SimpleBlock, ...)` (layout dfml)."""
  rows = [Row("params/Conv_0/kernel", ("trunk.0.weight",), "conv")]
  rows += _bn_rows("BatchNorm_0", ("trunk.1",), running_stats)
  shortcuts = resnet_shortcuts(arch)
  for j, shortcut in enumerate(shortcuts):
    ours, theirs = f"Block_{j}", f"trunk.{j + 2}"
    pairs = [("C1", "BN1"), ("C2", "BN2")]
    if shortcut:
      pairs.append(("shortcut", "BNshortcut"))
    for conv, bn in pairs:
      rows.append(Row(f"params/{ours}/{conv}/kernel", (f"{theirs}.{conv}.weight",), "conv"))
      rows += _bn_rows(f"{ours}/{bn}", (f"{theirs}.{bn}",), running_stats)
  head = f"trunk.{len(shortcuts) + 4}"  # stem conv and BN, blocks, AvgPool, Flatten
  rows.append(Row("params/Dense_0/kernel", (f"{head}.weight",), "linear"))
  rows.append(Row("params/Dense_0/bias", (f"{head}.bias",), "copy"))
  return rows


def _resnet12_table(running_stats):
  """models.ResNet12 <-> learn2learn's `ResNet12` (layout l2l)."""
  rows = []
  for i in range(BLOCKS):
    ours, theirs = f"Block_{i}", f"features.layer{i + 1}.0"
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
      rows.append(Row(f"params/{ours}/{conv}/kernel", (f"{theirs}.{conv}.weight",), "conv"))
      rows += _bn_rows(f"{ours}/{bn}", (f"{theirs}.{bn}",), running_stats)
    rows.append(Row(f"params/{ours}/downsample_conv/kernel",
                    (f"{theirs}.downsample.0.weight",), "conv"))
    rows += _bn_rows(f"{ours}/downsample_bn", (f"{theirs}.downsample.1",), running_stats)
  rows.append(Row("params/Dense_0/kernel", ("classifier.weight",), "linear"))
  rows.append(Row("params/Dense_0/bias", ("classifier.bias",), "copy"))
  return rows


def table(layout, running_stats, arch="conv4"):
  """The rows of `layout` for the network `arch` (one of ARCHS); `running_stats`: whether
  BatchNorm statistics are part of the model (PyTorch's running_mean / running_var)."""
  _check_arch(layout, arch)
  if arch == "conv4":
    return _conv4_table(layout, running_stats)
  if layout not in LAYOUTS:
    raise ZooError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
  if layout == "ours":
    raise ZooError("the ours layout is our own flat names: it has no table")
  if arch == "resnet12":
    return _resnet12_table(running_stats)
  return _resnet_table(arch, running_stats)


def ignored(layout, running_stats, arch="conv4"):
  """State-dict names a layout reads past (and writes on export): BatchNorm's counters."""
  if not running_stats:
    return ()
  return tuple(f"{name[:-len('weight')]}num_batches_tracked"
               for r in table(layout, running_stats, arch) if r.ours.endswith("/scale")
               for name in r.theirs)


def _to_ours(kind, value, feature_map):
  if kind == "conv":
    return value.transpose(2, 3, 1, 0)
  if kind == "linear":
    return value.T
  if kind == "head":
    ways, n_in = value.shape
    c = n_in // (feature_map * feature_map)
    return value.reshape(ways, c, feature_map, feature_map).transpose(2, 3, 1, 0).reshape(
        n_in, ways)
  return value


def _to_theirs(kind, value, feature_map):
  if kind == "conv":
    return value.transpose(3, 2, 0, 1)
  if kind == "linear":
    return value.T
  if kind == "head":
    n_in, ways = value.shape
    c = n_in // (feature_map * feature_map)
    return value.reshape(feature_map, feature_map, c, ways).transpose(3, 2, 0, 1).reshape(
        ways, n_in)
  return value


def their_shape(kind, shape):
  if kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if kind in ("head", "linear"):
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


def _first_convs(layout, arch):
  """(the first conv of each stage, the head's weight, a BatchNorm's running_mean) of a
  ResNet's state dict in `layout`."""
  if arch == "resnet12":
    return ([f"features.layer{i + 1}.0.conv1.weight" for i in range(BLOCKS)],
            "classifier.weight", "features.layer1.0.bn1.running_mean")
  starts = np.cumsum((0,) + RESNET_BLOCKS[arch][:-1]) + 2
  return ([f"trunk.{k}.C1.weight" for k in starts],
          f"trunk.{sum(RESNET_BLOCKS[arch]) + 4}.weight", "trunk.1.running_mean")


def infer_resnet(where, state_dict, layout, arch):
  """(widths, ways, running_stats) of the ResNet `arch` (resnet10, resnet18, resnet12) a
  state dict of `layout` holds; ZooError naming `where` when it fits none of the layout."""
  table(layout, True, arch)  # refuses a layout without this architecture
  convs, head, running_name = _first_convs(layout, arch)
  names = ([] if arch == "resnet12" else ["trunk.0.weight"]) + convs + [head]
  for name in names:
    if name not in state_dict:
      near = sorted(state_dict)[:8]
      raise ZooError(f"{where}: no {name} for the {layout} layout of {arch} (the file's "
                     f"first names: {near}); is the format or the architecture right?")
  shapes = {n: np.shape(state_dict[n]) for n in names}
  if any(len(shapes[n]) != 4 for n in names[:-1]) or len(shapes[head]) != 2 or shapes[
      names[0]][1] != 3:
    raise ZooError(f"{where}: shapes {[tuple(shapes[n]) for n in names]} of {names} are not "
                   f"a {arch} on RGB images (convs (out, in, k, k), the first with 3 inputs, "
                   "head (ways, features))")
  widths = tuple(int(shapes[n][0]) for n in convs)
  if arch != "resnet12" and shapes["trunk.0.weight"][0] != widths[0]:
    raise ZooError(f"{where}: a stem of {shapes['trunk.0.weight'][0]} channels before a "
                   f"first stage of {widths[0]}; models.ResNet's stem has the first "
                   "stage's width (the field's: 64 and 64)")
  return widths, int(shapes[head][0]), running_name in state_dict


def identify(where, state_dict, layout, image_size):
  """(architecture, running_stats) of the network of `layout` a state dict holds: the
  architecture of ARCH_LAYOUTS whose table names both its first tensor and its head in the
  dict (no two tables of a layout name both alike), with its sizes read from the dict
  (infer_conv4, infer_resnet): {"name": "conv4", "filters", "ways"} or {"name", "ways",
  "widths"}. import_state_dict then matches the whole table. ZooError naming `where` when
  the dict names no network of the layout."""
  archs = [a for a in ARCHS if layout in ARCH_LAYOUTS[a]]
  marks = {}
  for arch in archs:
    rows = table(layout, False, arch)
    marks[arch] = (rows[0].theirs[0], rows[-2].theirs[0])  # first conv, head weight
  fits = [a for a in archs if all(name in state_dict for name in marks[a])]
  if not fits:
    if "conv4" in archs and marks["conv4"][0] in state_dict:
      fits = ["conv4"]  # a Conv4 without its head: infer_conv4 says which name is missing
    else:
      near = sorted(state_dict)[:8]
      known = "; ".join(f"{a}: {' and '.join(marks[a])}" for a in archs)
      raise ZooError(f"{where}: names no network of the {layout} layout ({known}); the "
                     f"file's first names: {near}; is --format right?")
  arch = fits[0]
  if arch == "conv4":
    filters, ways, running = infer_conv4(where, state_dict, layout, image_size)
    return {"name": "conv4", "filters": filters, "ways": ways}, running
  widths, ways, running = infer_resnet(where, state_dict, layout, arch)
  return {"name": arch, "ways": ways, "widths": list(widths)}, running


def _check_image_size(where, layout, arch, image_size):
  """learn2learn's ResNet12 pools its last map with a fixed 5x5 window: the same function
  as ours (a global average) only where that map is 5x5."""
  if arch == "resnet12" and layout == "l2l" and image_size // 16 != 5:
    m = image_size // 16
    raise ZooError(f"{where}: learn2learn's ResNet12 averages its last feature map over a "
                   "fixed 5x5 window (AvgPool2d(5, stride=1)), the whole map only on "
                   f"images of 80 to 95 pixels; at {image_size}x{image_size} the map is "
                   f"{m}x{m}, so the network is not models.ResNet12 (a global average)")


def import_state_dict(where, state_dict, layout, expected, image_size, arch="conv4"):
  """Our flat {name: float32 array} from `state_dict` ({name: array}) of `layout`, for
  the network `arch` (one of ARCHS).

  `expected`: {our flat name: shape} (store.expected_shapes); whether BatchNorm
  statistics are part of the model follows from it. Exact match or ZooError naming
  `where`.
  """
  if layout == "ours":
    return {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  _check_image_size(where, layout, arch, image_size)
  running = any(k.startswith("batch_stats/") for k in expected)
  rows = table(layout, running, arch)
  ours = {r.ours for r in rows}
  if ours != set(expected):
    raise ZooError(f"{where}: the {layout} table of {arch} and the expected parameters "
                   f"differ in {sorted(ours ^ set(expected))[:8]}; is the architecture "
                   "right?")
  wanted = {n for r in rows for n in r.theirs}
  skip = set(ignored(layout, running, arch))
  missing = sorted(wanted - set(state_dict))
  unmatched = sorted(set(state_dict) - wanted - skip)
  if missing or unmatched:
    of = "" if arch == "conv4" else f" of {arch}"
    raise ZooError(f"{where}: does not fit the {layout} layout{of}: unmatched names "
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


def export_state_dict(flat, layout, image_size, arch="conv4"):
  """`layout`'s state dict ({name: array}, aliases and counters included) of one model's
  flat parameters (and BatchNorm statistics, if `flat` holds them) of the network `arch`."""
  if layout == "ours":
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}
  _check_image_size(f"the {layout} layout of {arch}", layout, arch, image_size)
  running = any(k.startswith("batch_stats/") for k in flat)
  fmap = feature_map_size(image_size)
  out = {}
  for r in table(layout, running, arch):
    value = np.ascontiguousarray(_to_theirs(r.kind, np.asarray(flat[r.ours], np.float32),
                                            fmap))
    for name in r.theirs:
      out[name] = value
  for name in ignored(layout, running, arch):
    out[name] = np.zeros((), np.int64)
  return out
