"""The zoo format: a folder holding `zoo.json` and one `.safetensors` file per model.

Every producer writes it (our trainer, the importer) and every method reads it. The
manifest says everything a model's function depends on besides its weights
(docs/zoo_format.md has the schema with an example):

  format, version     "dfl2l_zoo", 1
  architecture        {"name": "conv4", "filters": F, "ways": R}, or a ResNet:
                      {"name": "resnet10" | "resnet18" | "resnet12", "ways": R,
                      "widths": [4 ints] (optional; default the field's)}; the
                      architecture of every model that does not name its own
  image_size          the side of the square RGB images the models were trained on
  channel_order       "RGB" or "BGR": the order of the input channels the models expect
  normalization       {"mean": [3], "std": [3]}: a model sees (pixel / 255 - mean) / std
  batch_norm          "running": BatchNorm normalises with the statistics stored in each
                      model's file (PyTorch's eval mode); "batch": with the statistics of
                      the batch it is given (our trainer's zoos: their files hold none)
  class_names         the classes the models' labels index into
  models              per model: "file", its "sha256", "classes" (indices into
                      class_names, in the order of the model's outputs), "accuracy"
                      (the producer's, or null), "source" (where it came from, or null)
                      and, optionally, its own "architecture" (a mixed zoo); every
                      model of a zoo has the same ways
  producer            free-form provenance (which tool, from what), optional

A model file holds our Flax parameters under their paths ("params/Conv_0/kernel",
"batch_stats/BatchNorm_0/mean", ...; `layouts.OURS`), float32. Reading checks
everything (fields, file hashes, names, shapes, finiteness) and raises ZooError naming
the file and the problem. Writing goes to a temporary folder renamed at the end, so a
folder holding `zoo.json` is complete.

A zoo of several architectures is held as one group per architecture (`ZooGroup`: the
models of that architecture, their parameters stacked along a leading model axis), in
the order in which the manifest first names each; a zoo of one architecture is one group.
"""

import hashlib
import json
import os
import shutil
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import traverse_util

from dfl2l_jax import models
from dfl2l_jax.errors import ZooError

MANIFEST = "zoo.json"
FORMAT, VERSION = "dfl2l_zoo", 1
BATCH_NORM = ("running", "batch")
CHANNEL_ORDERS = ("RGB", "BGR")
# Architecture name -> (its required sizes, its optional ones).
ARCHITECTURES = {"conv4": (("filters", "ways"), ()),
                 **{name: (("ways",), ("widths",)) for name in models.RESNETS}}
FIELDS = ("format", "version", "architecture", "image_size", "channel_order",
          "normalization", "batch_norm", "class_names", "models", "producer")
MODEL_FIELDS = ("file", "sha256", "classes", "accuracy", "source", "architecture")
SEPARATOR = "/"


def sha256_bytes(data):
  return hashlib.sha256(data).hexdigest()


def network(manifest_or_arch, conv_impl="xla", bn_impl="flax", head=True):
  """The flax module of an architecture (a manifest: its top-level one).

  conv4 {"name", "filters", "ways"}; the ResNets of models.RESNETS {"name": "resnet10" |
  "resnet18" | "resnet12", "ways": R, "widths": [4 ints] (optional, default the
  field's)}. `conv_impl` and `bn_impl` are Conv4's choices; `head=False` gives the
  network's features instead of its logits.
  """
  arch = manifest_or_arch.get("architecture", manifest_or_arch)
  if arch["name"] in models.RESNETS:
    if (conv_impl, bn_impl) != ("xla", "flax"):
      raise ValueError(f"{arch['name']} has no conv_impl / bn_impl choices (Conv4's), got "
                       f"{conv_impl!r}, {bn_impl!r}")
    return models.resnet(arch["name"], arch["ways"], arch.get("widths"), head=head)
  return models.Conv4(ways=arch["ways"], filters=arch["filters"], conv_impl=conv_impl,
                      bn_impl=bn_impl, head=head)


def group_name(arch):
  """A short name of an architecture: "conv4-32", "resnet10", "resnet12-16-32-64-128"
  (a ResNet of other widths than the field's)."""
  if arch["name"] == "conv4":
    return f"conv4-{arch['filters']}"
  widths = arch.get("widths")
  if widths is None or tuple(widths) == models.RESNETS[arch["name"]]:
    return arch["name"]
  return f"{arch['name']}-{'-'.join(str(w) for w in widths)}"


def model_architecture(manifest, i):
  """The architecture of the manifest's model `i`: its own, or the zoo's."""
  return manifest["models"][i].get("architecture") or manifest["architecture"]


def expected_shapes(manifest, arch=None):
  """{flat name: shape} a model file of this manifest (of architecture `arch`, default
  the manifest's) holds."""
  s = manifest["image_size"]
  shapes = jax.eval_shape(network(arch or manifest["architecture"]).init,
                          jax.random.key(0), np.zeros((1, s, s, 3), np.float32))
  if manifest["batch_norm"] == "batch":
    shapes = {"params": shapes["params"]}
  flat = traverse_util.flatten_dict(shapes, sep=SEPARATOR)
  return {k: tuple(v.shape) for k, v in flat.items()}


def _fail(where, problem):
  raise ZooError(f"{where}: {problem}")


def _check_keys(where, obj, allowed, required):
  if not isinstance(obj, dict):
    _fail(where, f"expected a JSON object, found {type(obj).__name__}")
  unknown = sorted(set(obj) - set(allowed))
  if unknown:
    _fail(where, f"unknown field(s) {unknown} (known: {list(allowed)})")
  missing = [k for k in required if k not in obj]
  if missing:
    _fail(where, f"missing field(s) {missing}")


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def validate_architecture(where, arch):
  """Raises ZooError naming `where` unless `arch` is a known architecture with its sizes."""
  if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
    _fail(where, f"name must be one of {sorted(ARCHITECTURES)}, got "
                 f"{arch.get('name') if isinstance(arch, dict) else arch!r}")
  required, optional = ARCHITECTURES[arch["name"]]
  _check_keys(where, arch, ("name",) + required + optional, ("name",) + required)
  for k in required:
    if not _is_int(arch[k]) or arch[k] < (2 if k == "ways" else 1):
      _fail(where, f"{k} must be a positive integer (ways >= 2), got {arch[k]!r}")
  if "widths" in arch and (not isinstance(arch["widths"], list) or len(arch["widths"]) != 4
                           or not all(_is_int(w) and w >= 1 for w in arch["widths"])):
    _fail(where, f"widths must be 4 positive integers, got {arch['widths']!r}")
  if arch["name"] in ("resnet10", "resnet18"):
    widths = arch.get("widths") or models.RESNETS[arch["name"]]
    if any(a == b for a, b in zip(widths, widths[1:])):
      _fail(where, f"widths {list(widths)}: consecutive stages of a CloserLook ResNet "
                   "must differ in width (its blocks have no strided identity shortcut)")


def validate_manifest(manifest, where=MANIFEST):
  """Raises ZooError naming `where` and the first problem of `manifest`."""
  _check_keys(where, manifest, FIELDS, [f for f in FIELDS if f != "producer"])
  if manifest["format"] != FORMAT or manifest["version"] != VERSION:
    _fail(where, f"not a {FORMAT} manifest of version {VERSION} (format "
                 f"{manifest['format']!r}, version {manifest['version']!r})")
  arch = manifest["architecture"]
  validate_architecture(f"{where} architecture", arch)
  if not _is_int(manifest["image_size"]) or manifest["image_size"] < 16:
    _fail(where, f"image_size must be an integer >= 16 (a Conv4 pools four times), got "
                 f"{manifest['image_size']!r}")
  if manifest["channel_order"] not in CHANNEL_ORDERS:
    _fail(where, f"channel_order must be one of {CHANNEL_ORDERS}, got "
                 f"{manifest['channel_order']!r}")
  norm = manifest["normalization"]
  _check_keys(f"{where} normalization", norm, ("mean", "std"), ("mean", "std"))
  for k in ("mean", "std"):
    v = norm[k]
    if (not isinstance(v, list) or len(v) != 3
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                   and np.isfinite(x) for x in v)):
      _fail(where, f"normalization.{k} must be 3 finite numbers (one per channel), got {v!r}")
  if min(norm["std"]) <= 0:
    _fail(where, f"normalization.std must be positive, got {norm['std']}")
  if manifest["batch_norm"] not in BATCH_NORM:
    _fail(where, f"batch_norm must be one of {BATCH_NORM}, got {manifest['batch_norm']!r}")
  names = manifest["class_names"]
  if (not isinstance(names, list) or not names
      or not all(isinstance(n, str) and n for n in names)):
    _fail(where, "class_names must be a non-empty list of non-empty strings")
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    _fail(where, f"class_names lists {dup[:5]} more than once")
  entries = manifest["models"]
  if not isinstance(entries, list) or len(entries) < 2:
    _fail(where, f"a zoo needs at least 2 models, the manifest lists "
                 f"{len(entries) if isinstance(entries, list) else entries!r}")
  files = set()
  for i, m in enumerate(entries):
    w = f"{where} models[{i}]"
    _check_keys(w, m, MODEL_FIELDS, ("file", "sha256", "classes"))
    f = m["file"]
    if (not isinstance(f, str) or not f.endswith(".safetensors") or os.sep in f
        or f.startswith(".")):
      _fail(w, f"file must be a .safetensors file name inside the zoo folder, got {f!r}")
    if f in files:
      _fail(w, f"file {f} is listed twice")
    files.add(f)
    if not isinstance(m["sha256"], str) or len(m["sha256"]) != 64:
      _fail(w, f"sha256 must be 64 hex digits, got {m['sha256']!r}")
    if m.get("architecture") is not None:
      validate_architecture(f"{w} architecture", m["architecture"])
      if m["architecture"]["ways"] != arch["ways"]:
        _fail(w, f"a {m['architecture']['ways']}-way model in a {arch['ways']}-way zoo: every "
                 "model of a zoo has the same number of outputs")
    cls = m["classes"]
    if (not isinstance(cls, list) or len(cls) != arch.get("ways")
        or not all(_is_int(c) and 0 <= c < len(names) for c in cls)):
      _fail(w, f"classes must be {arch.get('ways')} indices into class_names "
               f"(0..{len(names) - 1}), got {cls!r}")
    if len(set(cls)) != len(cls):
      _fail(w, f"classes {cls} repeat a class")
    acc = m.get("accuracy")
    if acc is not None and not (isinstance(acc, (int, float)) and np.isfinite(acc)):
      _fail(w, f"accuracy must be a number or null, got {acc!r}")
  if "producer" in manifest and not isinstance(manifest["producer"], dict):
    _fail(where, "producer must be a JSON object")


def read_manifest(directory):
  """The checked manifest of the zoo in `directory`."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise ZooError(f"{directory}: no such zoo folder")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise ZooError(f"{path}: missing; a zoo folder holds zoo.json and its models' "
                   ".safetensors files (docs/zoo_format.md)") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ZooError(f"{path}: not readable JSON ({e})") from None
  validate_manifest(manifest, path)
  return manifest


def digest(manifest):
  """The sha256 of the manifest's canonical JSON; it covers each model file's sha256."""
  return sha256_bytes(json.dumps(manifest, sort_keys=True).encode())


def read_safetensors(path, sha256=None, expected_by=None):
  """{name: array} of the safetensors file `path`; ZooError naming the file if it cannot
  be read, is not safetensors, or its sha256 differs from `sha256` (given by
  `expected_by`, default the manifest)."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ZooError(f"{path}: cannot be read ({e.strerror or e})") from None
  if sha256 is not None and sha256_bytes(data) != sha256:
    raise ZooError(f"{path}: its sha256 {sha256_bytes(data)[:12]}... differs from "
                   f"{expected_by or 'the manifest'}'s {sha256[:12]}... (changed or corrupt "
                   "file)")
  try:
    return st_numpy.load(data)
  except Exception as e:  # pylint: disable=broad-except  (safetensors' own error types)
    raise ZooError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})"
                   ) from None


def read_model(path, expected, sha256=None):
  """{flat name: float32 array} of one model file, checked against `expected` shapes
  and, when given, the file's `sha256`."""
  tensors = read_safetensors(path, sha256)
  check_tensors(path, tensors, expected)
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def check_tensors(where, tensors, expected):
  """Raises ZooError unless `tensors` holds exactly the `expected` names and shapes,
  as finite floating-point arrays."""
  missing = sorted(set(expected) - set(tensors))
  extra = sorted(set(tensors) - set(expected))
  if missing or extra:
    _fail(where, f"names do not match the manifest's architecture: missing {missing[:6]}"
                 f"{' ...' if len(missing) > 6 else ''}, unexpected {extra[:6]}"
                 f"{' ...' if len(extra) > 6 else ''}")
  for k, shape in expected.items():
    v = tensors[k]
    if tuple(v.shape) != shape:
      _fail(where, f"{k} has shape {tuple(v.shape)}, expected {shape}")
    if not np.issubdtype(np.asarray(v).dtype, np.floating):
      _fail(where, f"{k} has dtype {np.asarray(v).dtype}, expected floating point")
    if not np.isfinite(np.asarray(v, np.float32)).all():
      _fail(where, f"{k} holds NaN or Inf")


class ZooGroup(NamedTuple):
  """The models of one architecture in a zoo: `indices` into the manifest's models, their
  parameters and (batch_norm "running") BatchNorm statistics stacked in that order."""
  name: str            # group_name(architecture)
  architecture: dict
  indices: Any         # int array
  params: Any
  bn_stats: Any


def group_indices(manifest):
  """[(architecture, [model indices])], one per architecture, in order of first mention."""
  groups = {}
  for i in range(len(manifest["models"])):
    arch = model_architecture(manifest, i)
    groups.setdefault(json.dumps(arch, sort_keys=True), (arch, []))[1].append(i)
  return list(groups.values())


class LoadedZoo:
  """A zoo read from its folder: the manifest and its groups (one per architecture,
  ZooGroup). `params` and `bn_stats` are those of a zoo of one architecture."""

  def __init__(self, directory, manifest, groups):
    self.directory, self.manifest, self.groups = directory, manifest, list(groups)

  @property
  def mixed(self):
    return len(self.groups) > 1

  def _single(self, what):
    if self.mixed:
      raise ZooError(f"{self.directory}: a zoo of {len(self.groups)} architectures "
                     f"({', '.join(g.name for g in self.groups)}) has no single {what}; "
                     "take one group's (LoadedZoo.groups)")
    return getattr(self.groups[0], what)

  @property
  def params(self):
    return self._single("params")

  @property
  def bn_stats(self):
    return self._single("bn_stats")

  @property
  def num_models(self):
    return len(self.manifest["models"])

  @property
  def digest(self):
    return digest(self.manifest)

  def file_hashes(self):
    return {m["file"]: m["sha256"] for m in self.manifest["models"]}


def stack(flats):
  """Per-model {flat name: array} -> (params, batch_stats or None), stacked."""
  tree = traverse_util.unflatten_dict(
      {k: np.stack([f[k] for f in flats]) for k in flats[0]}, sep=SEPARATOR)
  return tree["params"], tree.get("batch_stats")


def load(directory):
  """Reads and checks the zoo in `directory`; returns a LoadedZoo."""
  manifest = read_manifest(directory)
  groups = []
  for arch, indices in group_indices(manifest):
    expected = expected_shapes(manifest, arch)
    flats = [read_model(os.path.join(directory, manifest["models"][i]["file"]), expected,
                        manifest["models"][i]["sha256"]) for i in indices]
    params, stats = stack(flats)
    groups.append(ZooGroup(group_name(arch), arch, np.asarray(indices), params, stats))
  return LoadedZoo(directory, manifest, groups)


def model_file_name(i):
  return f"model_{i:04d}.safetensors"


def write(directory, manifest, params=None, bn_stats=None, groups=None):
  """Writes a zoo folder: one file per model, then zoo.json with the files' names and
  hashes filled in.

  The models: the stacked `params` (and `bn_stats` for batch_norm "running") of a zoo of
  one architecture, or `groups` (ZooGroup: each architecture's models, at their indices
  into the manifest's models) of any zoo. `manifest` is complete except for each model's
  "file" and "sha256". Refuses a `directory` that exists and is not empty. Everything is
  written into a temporary folder beside it, renamed at the end: a killed write leaves no
  folder that holds a zoo.json. Returns the manifest written.
  """
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise ZooError(f"{directory}: exists and is not an empty folder; choose a new --out")
  if groups is None:
    groups = [ZooGroup("", manifest["architecture"],
                       np.arange(len(manifest["models"])), params, bn_stats)]
  n = len(manifest["models"])
  per_model = [None] * n
  for g in groups:
    tree = {"params": g.params}
    if manifest["batch_norm"] == "running":
      if g.bn_stats is None:
        raise ZooError(f"{directory}: batch_norm 'running' needs the models' statistics")
      tree["batch_stats"] = g.bn_stats
    flat = {k: np.asarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(tree, sep=SEPARATOR).items()}
    if any(v.shape[0] != len(g.indices) for v in flat.values()):
      raise ZooError(f"{directory}: the parameters hold "
                     f"{sorted({v.shape[0] for v in flat.values()})} models, the manifest "
                     f"{len(g.indices)}")
    for row, i in enumerate(g.indices):
      if not 0 <= i < n or per_model[i] is not None:
        raise ZooError(f"{directory}: model {i} is not one of the manifest's {n} or is "
                       "given twice")
      per_model[i] = {k: np.ascontiguousarray(v[row]) for k, v in flat.items()}
  if any(f is None for f in per_model):
    raise ZooError(f"{directory}: no parameters for model(s) "
                   f"{[i for i, f in enumerate(per_model) if f is None][:5]}")
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  out = json.loads(json.dumps(manifest))
  try:
    for i, entry in enumerate(out["models"]):
      data = st_numpy.save(per_model[i])
      entry["file"], entry["sha256"] = model_file_name(i), sha256_bytes(data)
      with open(os.path.join(tmp, entry["file"]), "wb") as f:
        f.write(data)
    validate_manifest(out, os.path.join(directory, MANIFEST))
    for arch, indices in group_indices(out):
      check_tensors(os.path.join(directory, out["models"][indices[0]]["file"]),
                    per_model[indices[0]], expected_shapes(out, arch))
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
      f.write("\n")
    if os.path.isdir(directory):
      os.rmdir(directory)  # empty, checked above
    os.rename(tmp, directory)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise ZooError(f"{directory}: cannot be written ({e.strerror or e}); nothing was "
                   "left there") from None
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
